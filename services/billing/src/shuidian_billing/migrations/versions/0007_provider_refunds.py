"""A refund of an online payment also goes back through the provider: its request number there, the
provider's refund id and where it stands (pending = not yet accepted by the provider, retried by the
sweeper). A refund the provider refuses is held for review."""

from alembic import op

revision = "0007_provider_refunds"
down_revision = "0006_order_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE billing.refunds
        ADD COLUMN provider_status text CHECK (provider_status IN ('pending', 'processing', 'success', 'failed')),
        ADD COLUMN provider_refund_id text,
        ADD COLUMN provider_updated_at timestamptz
    """)
    op.execute(
        "CREATE INDEX refunds_pending_at_provider ON billing.refunds (created_at) WHERE provider_status = 'pending'"
    )
    op.execute("ALTER TABLE billing.payment_reviews DROP CONSTRAINT IF EXISTS payment_reviews_kind_check")
    op.execute(
        "ALTER TABLE billing.payment_reviews ADD CONSTRAINT payment_reviews_kind_check "
        "CHECK (kind IN ('bank_unmatched', 'callback_amount_mismatch', 'refund_failed'))"
    )


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
