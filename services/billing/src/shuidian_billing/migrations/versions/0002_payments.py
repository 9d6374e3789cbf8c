"""Payment channels: online orders and their provider callbacks, cash counters and shifts with
receipts, bank statement imports, a review queue, refunds and move-out settlements."""

from alembic import op

revision = "0002_payments"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An order is created before the tenant pays online; the provider's notification names it
    # (out_trade_no) and carries the provider's own transaction id.
    op.execute("""
    CREATE TABLE billing.payment_orders (
        order_id text PRIMARY KEY,
        provider text NOT NULL CHECK (provider IN ('wechat', 'alipay', 'sandbox')),
        account_id text NOT NULL REFERENCES billing.accounts,
        amount numeric(14, 2) NOT NULL CHECK (amount > 0),
        idempotency_key text NOT NULL UNIQUE,
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid')),
        provider_txn_id text,
        payment_id uuid,
        created_at timestamptz NOT NULL DEFAULT now(),
        paid_at timestamptz
    )""")
    # Every notification that reached us, accepted or not: the audit trail of forged attempts.
    op.execute("""
    CREATE TABLE billing.callback_log (
        callback_id bigserial PRIMARY KEY,
        provider text NOT NULL,
        outcome text NOT NULL CHECK (outcome IN ('accepted', 'replayed', 'rejected', 'amount_mismatch', 'ignored')),
        reason text NOT NULL DEFAULT '',
        order_id text,
        provider_txn_id text,
        payment_id uuid,
        headers jsonb NOT NULL DEFAULT '{}',
        body text NOT NULL,
        remote text,
        received_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX callback_log_by_time ON billing.callback_log (received_at DESC)")
    op.execute("""
    CREATE TABLE billing.cash_counters (
        counter_id text PRIMARY KEY,
        last_receipt_no bigint NOT NULL DEFAULT 0
    )""")
    op.execute("""
    CREATE TABLE billing.cash_shifts (
        shift_id uuid PRIMARY KEY,
        counter_id text NOT NULL REFERENCES billing.cash_counters,
        cashier text NOT NULL,
        opening_float numeric(14, 2) NOT NULL DEFAULT 0,
        opened_at timestamptz NOT NULL DEFAULT now(),
        closed_at timestamptz,
        counted_cash numeric(14, 2),
        closed_by text
    )""")
    op.execute(
        "CREATE UNIQUE INDEX one_open_shift_per_counter ON billing.cash_shifts (counter_id) WHERE closed_at IS NULL"
    )
    op.execute("""
    CREATE TABLE billing.cash_receipts (
        counter_id text NOT NULL REFERENCES billing.cash_counters,
        receipt_no bigint NOT NULL,
        shift_id uuid NOT NULL REFERENCES billing.cash_shifts,
        payment_id uuid NOT NULL UNIQUE REFERENCES billing.payments,
        amount numeric(14, 2) NOT NULL,
        issued_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (counter_id, receipt_no)
    )""")
    op.execute("CREATE INDEX receipts_by_shift ON billing.cash_receipts (shift_id)")
    # Payment references and room codes a tenant may write on a bank transfer.
    op.execute("""
    CREATE TABLE billing.payment_aliases (
        alias text PRIMARY KEY,
        account_id text NOT NULL REFERENCES billing.accounts,
        kind text NOT NULL CHECK (kind IN ('reference', 'room'))
    )""")
    op.execute("CREATE INDEX aliases_by_account ON billing.payment_aliases (account_id)")
    op.execute("""
    CREATE TABLE billing.bank_imports (
        import_id uuid PRIMARY KEY,
        filename text NOT NULL,
        sha256 text NOT NULL,
        imported_by text NOT NULL,
        imported_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE billing.bank_lines (
        line_key text PRIMARY KEY,
        import_id uuid NOT NULL REFERENCES billing.bank_imports,
        line_no int NOT NULL,
        value_date date NOT NULL,
        amount numeric(14, 2) NOT NULL CHECK (amount > 0),
        payer text NOT NULL DEFAULT '',
        memo text NOT NULL DEFAULT '',
        status text NOT NULL CHECK (status IN ('matched', 'review', 'assigned')),
        account_id text REFERENCES billing.accounts,
        payment_id uuid,
        reason text NOT NULL DEFAULT ''
    )""")
    op.execute("CREATE INDEX bank_lines_in_review ON billing.bank_lines (status) WHERE status = 'review'")
    # The review queue: bank lines nobody could match, callbacks whose amount disagreed.
    op.execute("""
    CREATE TABLE billing.payment_reviews (
        review_id bigserial PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('bank_unmatched', 'callback_amount_mismatch')),
        subject text NOT NULL,
        amount numeric(14, 2) NOT NULL,
        reason text NOT NULL,
        detail jsonb NOT NULL DEFAULT '{}',
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'assigned', 'dismissed')),
        account_id text REFERENCES billing.accounts,
        payment_id uuid,
        resolved_by text,
        resolved_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (kind, subject)
    )""")
    op.execute("CREATE INDEX open_reviews ON billing.payment_reviews (created_at) WHERE status = 'open'")
    op.execute("""
    CREATE TABLE billing.refunds (
        refund_id uuid PRIMARY KEY,
        payment_id uuid NOT NULL REFERENCES billing.payments,
        account_id text NOT NULL REFERENCES billing.accounts,
        channel text NOT NULL,
        amount numeric(14, 2) NOT NULL CHECK (amount > 0),
        idempotency_key text NOT NULL UNIQUE,
        fingerprint text NOT NULL,
        txn_id uuid NOT NULL,
        operator text NOT NULL,
        reason text NOT NULL,
        settlement_id uuid,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX refunds_by_payment ON billing.refunds (payment_id)")
    op.execute("""
    CREATE TABLE billing.settlements (
        settlement_id uuid PRIMARY KEY,
        account_id text NOT NULL REFERENCES billing.accounts,
        idempotency_key text NOT NULL UNIQUE,
        summary jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    # Statements read a household's entries by booking time.
    op.execute("CREATE INDEX ledger_by_account_time ON billing.ledger_entries (ledger_account, created_at)")


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
