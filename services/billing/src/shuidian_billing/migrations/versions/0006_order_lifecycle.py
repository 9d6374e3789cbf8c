"""Online orders live a life at the provider: created → paid, closed or expired, with an expiry, the
payment method and what the payer's app needs to pay (prepay id, QR code, pay URL); the sweeper
records when it last asked the provider about an order."""

from alembic import op

revision = "0006_order_lifecycle"
down_revision = "0005_reading_streams"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE billing.payment_orders DROP CONSTRAINT IF EXISTS payment_orders_status_check")
    op.execute(
        "ALTER TABLE billing.payment_orders ADD CONSTRAINT payment_orders_status_check "
        "CHECK (status IN ('open', 'paid', 'closed', 'expired'))"
    )
    op.execute("""
    ALTER TABLE billing.payment_orders
        ADD COLUMN method text NOT NULL DEFAULT 'native',
        ADD COLUMN expires_at timestamptz NOT NULL DEFAULT now() + interval '30 minutes',
        ADD COLUMN pay jsonb,
        ADD COLUMN payer jsonb NOT NULL DEFAULT '{}',
        ADD COLUMN checked_at timestamptz,
        ADD COLUMN closed_at timestamptz
    """)
    # The sweeper's work list: open orders, oldest expiry first.
    op.execute("CREATE INDEX open_orders_by_expiry ON billing.payment_orders (expires_at) WHERE status = 'open'")


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
