"""Lease lifecycle: fixed fees pro-rated by leased days (what was posted per lease and month, and the
sub-fen remainders carried), move-out settlements of a lease with the closing readings staff entered,
and when a room was registered (vacant since then until its first lease)."""

from alembic import op

revision = "0003_lease_lifecycle"
down_revision = "0002_premises"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE billing.rooms ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()")
    # One row per lease, local month, utility and fixed component: posted by the monthly run or, for
    # the move-out month, by the lease's settlement; whichever comes second finds it and posts nothing.
    op.execute("""
    CREATE TABLE billing.fee_postings (
        lease_id text NOT NULL REFERENCES billing.leases,
        month date NOT NULL,
        utility text NOT NULL,
        component text NOT NULL,
        account_id text NOT NULL REFERENCES billing.accounts,
        days int NOT NULL CHECK (days > 0),
        days_in_month int NOT NULL CHECK (days_in_month BETWEEN 28 AND 31 AND days <= days_in_month),
        exact numeric(24, 10) NOT NULL,
        amount numeric(14, 2) NOT NULL,
        txn_id uuid,
        posted_by text NOT NULL CHECK (posted_by IN ('monthly_run', 'settlement')),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (lease_id, month, utility, component)
    )""")
    # The part of a fen cut off a pro-rated fee, carried to the household's next fee of that component.
    op.execute("""
    CREATE TABLE billing.fee_carries (
        account_id text NOT NULL REFERENCES billing.accounts,
        utility text NOT NULL,
        component text NOT NULL,
        remainder numeric(24, 10) NOT NULL,
        PRIMARY KEY (account_id, utility, component)
    )""")
    # A lease is settled once: final readings, final bill, refund. summary is NULL while in progress
    # (a retry with the same key resumes it).
    op.execute("""
    CREATE TABLE billing.lease_settlements (
        lease_id text PRIMARY KEY REFERENCES billing.leases,
        settlement_id uuid NOT NULL UNIQUE,
        idempotency_key text NOT NULL UNIQUE,
        fingerprint text NOT NULL,
        operator text NOT NULL,
        reason text NOT NULL,
        summary jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        completed_at timestamptz
    )""")
    # Closing values staff entered for meters that could not be read at move-out: billed as readings.
    op.execute("""
    CREATE TABLE billing.closing_readings (
        lease_id text NOT NULL REFERENCES billing.leases,
        meter_id text NOT NULL,
        utility text NOT NULL,
        register text NOT NULL,
        value numeric(20, 6) NOT NULL,
        sampled_at timestamptz NOT NULL,
        reading_id uuid NOT NULL,
        operator text NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (lease_id, meter_id)
    )""")
    # The occupancy loop looks up leases and room bindings that started or ended since its last pass.
    op.execute("CREATE INDEX leases_by_start ON billing.leases (starts_at)")
    op.execute("CREATE INDEX leases_by_end ON billing.leases (ends_at)")
    op.execute("CREATE INDEX room_bindings_from ON billing.meter_bindings (valid_from) WHERE room_id IS NOT NULL")
    op.execute("CREATE INDEX room_bindings_to ON billing.meter_bindings (valid_to) WHERE room_id IS NOT NULL")


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
