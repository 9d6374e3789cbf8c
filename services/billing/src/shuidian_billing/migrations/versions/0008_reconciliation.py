"""Daily reconciliation (对账) with each provider's bill: one report per provider and day (settled vs
booked), and its differences in the review queue."""

from alembic import op

revision = "0008_reconciliation"
down_revision = "0007_provider_refunds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE billing.reconciliations (
        provider text NOT NULL,
        bill_date date NOT NULL,
        settled_payments numeric(14, 2) NOT NULL,
        settled_refunds numeric(14, 2) NOT NULL,
        booked_payments numeric(14, 2) NOT NULL,
        booked_refunds numeric(14, 2) NOT NULL,
        lines int NOT NULL,
        differences jsonb NOT NULL,
        run_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (provider, bill_date)
    )""")
    op.execute("ALTER TABLE billing.payment_reviews DROP CONSTRAINT IF EXISTS payment_reviews_kind_check")
    op.execute(
        "ALTER TABLE billing.payment_reviews ADD CONSTRAINT payment_reviews_kind_check CHECK (kind IN ("
        "'bank_unmatched', 'callback_amount_mismatch', 'refund_failed', "
        "'reconciliation_missing', 'reconciliation_extra', 'reconciliation_amount'))"
    )


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
