"""Payment problems in the review queue: a burst of notifications that failed verification, and a merchant's
notification for an order of an estate another merchant serves; each order remembers the merchant it was
opened with (per-estate merchants; 'default' is the one of the flat settings)."""

from alembic import op

revision = "0010_payment_problems"
down_revision = "0009_tariff_plans"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE billing.payment_reviews DROP CONSTRAINT IF EXISTS payment_reviews_kind_check")
    op.execute(
        "ALTER TABLE billing.payment_reviews ADD CONSTRAINT payment_reviews_kind_check CHECK (kind IN ("
        "'bank_unmatched', 'callback_amount_mismatch', 'refund_failed', "
        "'reconciliation_missing', 'reconciliation_extra', 'reconciliation_amount', "
        "'callback_forged', 'callback_wrong_merchant'))"
    )
    op.execute("ALTER TABLE billing.payment_orders ADD COLUMN merchant text NOT NULL DEFAULT 'default'")


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
