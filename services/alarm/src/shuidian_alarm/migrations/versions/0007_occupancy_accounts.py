"""The household of each leased room (account and tenant, from billing's `RoomOccupancy`): an alarm raised for an
account is placed in the estate and room of the lease, even where no alarm target names the account."""

from alembic import op

revision = "0007_occupancy_accounts"
down_revision = "0006_tenant_contacts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE alarm.room_occupancy ADD COLUMN account_id text, ADD COLUMN tenant_id text")
    op.execute("CREATE INDEX room_occupancy_accounts ON alarm.room_occupancy (account_id) WHERE account_id IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE alarm.room_occupancy DROP COLUMN account_id, DROP COLUMN tenant_id")
