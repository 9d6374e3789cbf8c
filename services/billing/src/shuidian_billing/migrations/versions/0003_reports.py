"""Indexes for the staff listings and reports: the premises tree walked downwards (estate →
buildings → floors → rooms), accounts by estate, a household's leases, payments by time."""

from alembic import op

revision = "0003_reports"
down_revision = ("0002_premises", "0002_payments")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS buildings_by_estate ON billing.buildings (estate_id)")
    op.execute("CREATE INDEX IF NOT EXISTS rooms_by_floor ON billing.rooms (floor_id)")
    op.execute("CREATE INDEX IF NOT EXISTS accounts_by_estate ON billing.accounts (estate_id)")
    op.execute("CREATE INDEX IF NOT EXISTS leases_by_account ON billing.leases (account_id, starts_at)")
    op.execute("CREATE INDEX IF NOT EXISTS payments_by_time ON billing.payments (created_at)")
    op.execute("CREATE INDEX IF NOT EXISTS payments_by_account ON billing.payments (account_id, created_at)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS common_meters_by_estate ON billing.meter_bindings (estate_id) "
        "WHERE estate_id IS NOT NULL"
    )


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
