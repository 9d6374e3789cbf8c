"""Each purse keeps the last balance event it caused and when its level last changed, so billing
can announce it again (anti-entropy: a consumer that lost the event converges). Also the one head
the two 0003 branches merge into."""

from alembic import op

revision = "0004_level_reannounce"
down_revision = ("0003_lease_lifecycle", "0003_reports")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE billing.purse_levels ADD COLUMN last_event jsonb, "
        "ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now()"
    )
    op.execute("CREATE INDEX purse_levels_to_announce ON billing.purse_levels (changed_at) WHERE last_event IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE billing.purse_levels DROP COLUMN last_event, DROP COLUMN changed_at")
