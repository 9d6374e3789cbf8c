"""Accounts, append-only double-entry ledger, meter bindings, tariffs, watermarks, hourly accruals, payments."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("billing"))
    op.execute("""
    CREATE TABLE billing.accounts (
        account_id text PRIMARY KEY,
        name text NOT NULL,
        low_1 numeric(14, 2) NOT NULL DEFAULT 20.00,
        low_2 numeric(14, 2) NOT NULL DEFAULT 5.00,
        grace_credit numeric(14, 2) NOT NULL DEFAULT 0.00,
        level text NOT NULL DEFAULT 'ok',
        sequence bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    # Ledger: append-only, double entry. Household accounts are 'household:<account_id>'; system
    # accounts are e.g. 'revenue:electricity', 'cash:counter'.
    op.execute("""
    CREATE TABLE billing.ledger_entries (
        entry_id bigserial PRIMARY KEY,
        txn_id uuid NOT NULL,
        ledger_account text NOT NULL,
        amount numeric(14, 2) NOT NULL,
        kind text NOT NULL,
        meter_id text,
        period_start timestamptz,
        reverses uuid,
        memo text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX ledger_by_account ON billing.ledger_entries (ledger_account, entry_id)")
    op.execute("CREATE INDEX ledger_by_txn ON billing.ledger_entries (txn_id)")
    op.execute("""
    CREATE FUNCTION billing.refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger entries are append-only: % refused (post a reversing entry instead)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$""")
    op.execute("""
    CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON billing.ledger_entries
        FOR EACH ROW EXECUTE FUNCTION billing.refuse_ledger_change()""")
    op.execute("""
    CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON billing.ledger_entries
        FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_ledger_change()""")
    # Every transaction balances: checked at commit, once per transaction id touched.
    op.execute("""
    CREATE FUNCTION billing.check_txn_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE total numeric;
    BEGIN
        SELECT sum(amount) INTO total FROM billing.ledger_entries WHERE txn_id = NEW.txn_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % does not balance (sum %)', NEW.txn_id, total
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$""")
    op.execute("""
    CREATE CONSTRAINT TRIGGER ledger_balanced AFTER INSERT ON billing.ledger_entries
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing.check_txn_balanced()""")
    op.execute("""
    CREATE TABLE billing.balances (
        ledger_account text PRIMARY KEY,
        balance numeric(14, 2) NOT NULL DEFAULT 0
    )""")
    op.execute("""
    CREATE TABLE billing.meter_bindings (
        meter_id text PRIMARY KEY,
        account_id text NOT NULL REFERENCES billing.accounts,
        utility text NOT NULL CHECK (utility IN ('electricity', 'water')),
        bound_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX bindings_by_account ON billing.meter_bindings (account_id)")
    op.execute("""
    CREATE TABLE billing.tariffs (
        tariff_id bigserial PRIMARY KEY,
        utility text NOT NULL CHECK (utility IN ('electricity', 'water')),
        unit_price numeric(12, 6) NOT NULL CHECK (unit_price >= 0),
        effective_from timestamptz NOT NULL,
        UNIQUE (utility, effective_from)
    )""")
    op.execute("""
    CREATE TABLE billing.watermarks (
        meter_id text NOT NULL,
        register text NOT NULL,
        value numeric(20, 6) NOT NULL,
        sampled_at timestamptz NOT NULL,
        PRIMARY KEY (meter_id, register)
    )""")
    op.execute("""
    CREATE TABLE billing.accruals (
        meter_id text NOT NULL,
        hour timestamptz NOT NULL,
        account_id text NOT NULL,
        utility text NOT NULL,
        quantity numeric(20, 6) NOT NULL,
        amount numeric(24, 10) NOT NULL,
        PRIMARY KEY (meter_id, hour)
    )""")
    op.execute("CREATE INDEX accruals_by_account ON billing.accruals (account_id)")
    op.execute("""
    CREATE TABLE billing.carries (
        meter_id text PRIMARY KEY,
        remainder numeric(24, 10) NOT NULL
    )""")
    op.execute("""
    CREATE TABLE billing.usage_hourly (
        meter_id text NOT NULL,
        hour timestamptz NOT NULL,
        utility text NOT NULL,
        quantity numeric(20, 6) NOT NULL,
        cost numeric(24, 10) NOT NULL,
        PRIMARY KEY (meter_id, hour)
    )""")
    op.execute("""
    CREATE TABLE billing.held_readings (
        reading_id uuid PRIMARY KEY,
        meter_id text NOT NULL,
        register text NOT NULL,
        value numeric(20, 6) NOT NULL,
        sampled_at timestamptz NOT NULL,
        reason text NOT NULL,
        held_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE billing.payments (
        payment_id uuid PRIMARY KEY,
        account_id text NOT NULL REFERENCES billing.accounts,
        channel text NOT NULL,
        amount numeric(14, 2) NOT NULL CHECK (amount > 0),
        reference text,
        idempotency_key text NOT NULL UNIQUE,
        fingerprint text NOT NULL,
        txn_id uuid NOT NULL,
        balance_after numeric(14, 2) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
