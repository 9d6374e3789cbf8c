"""Tariff plans per estate (optionally building) and customer class, each with its own effective-dated
versions; the customer class of rooms, leases and meter bindings; retroactive price correction runs.

Every existing tariff version becomes a version of the one default plan, so `/v1/tariffs/{utility}`
keeps meaning what it meant."""

from alembic import op

revision = "0009_tariff_plans"
down_revision = "0008_reconciliation"
branch_labels = None
depends_on = None

_CLASSES = "('residential', 'non_residential', 'common')"


def upgrade() -> None:
    op.execute(f"""
    CREATE TABLE billing.tariff_plans (
        plan_id text PRIMARY KEY,
        name text NOT NULL,
        estate_id text REFERENCES billing.estates,
        building_id text REFERENCES billing.buildings,
        customer_class text CHECK (customer_class IN {_CLASSES}),
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK (building_id IS NULL OR estate_id IS NOT NULL)
    )""")
    # One plan per scope: resolution never has to choose between two equally specific plans.
    op.execute(
        "CREATE UNIQUE INDEX one_plan_per_scope ON billing.tariff_plans "
        "(coalesce(estate_id, ''), coalesce(building_id, ''), coalesce(customer_class, ''))"
    )
    op.execute("INSERT INTO billing.tariff_plans (plan_id, name) VALUES ('default', '默认价格 Default plan')")
    op.execute(
        "ALTER TABLE billing.tariffs ADD COLUMN plan_id text NOT NULL DEFAULT 'default' REFERENCES billing.tariff_plans"
    )
    op.execute("ALTER TABLE billing.tariffs DROP CONSTRAINT tariffs_utility_effective_from_key")
    op.execute(
        "ALTER TABLE billing.tariffs ADD CONSTRAINT one_version_per_instant UNIQUE (plan_id, utility, effective_from)"
    )
    op.execute(
        "ALTER TABLE billing.rooms ADD COLUMN customer_class text NOT NULL DEFAULT 'residential' "
        f"CHECK (customer_class IN {_CLASSES})"
    )
    op.execute(f"ALTER TABLE billing.leases ADD COLUMN customer_class text CHECK (customer_class IN {_CLASSES})")
    op.execute(
        f"ALTER TABLE billing.meter_bindings ADD COLUMN customer_class text CHECK (customer_class IN {_CLASSES})"
    )
    # A correction run (调价追溯) re-prices a closed period of one plan and utility under a retroactive
    # version, and posts each household's difference as an adjustment: the run and its lines are the audit.
    op.execute("""
    CREATE TABLE billing.price_corrections (
        run_id uuid PRIMARY KEY,
        plan_id text NOT NULL REFERENCES billing.tariff_plans,
        utility text NOT NULL CHECK (utility IN ('electricity', 'water')),
        period_start timestamptz NOT NULL,
        period_end timestamptz NOT NULL CHECK (period_end > period_start),
        components jsonb NOT NULL,
        fingerprint text NOT NULL,
        operator text NOT NULL,
        reason text NOT NULL,
        old_total numeric(20, 10) NOT NULL,
        new_total numeric(20, 10) NOT NULL,
        posted_total numeric(14, 2) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX price_corrections_by_plan ON billing.price_corrections (plan_id, utility, period_start)")
    op.execute("""
    CREATE TABLE billing.price_correction_lines (
        run_id uuid NOT NULL REFERENCES billing.price_corrections,
        account_id text NOT NULL,
        quantity numeric(20, 6) NOT NULL,
        old_amount numeric(20, 10) NOT NULL,
        new_amount numeric(20, 10) NOT NULL,
        posted numeric(14, 2) NOT NULL,
        txn_id uuid,
        PRIMARY KEY (run_id, account_id)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE billing.price_correction_lines")  # contract: only 0009 and later use it
    op.execute("DROP TABLE billing.price_corrections")  # contract: only 0009 and later use it
    op.execute("ALTER TABLE billing.meter_bindings DROP COLUMN customer_class")  # contract: only 0009 and later use it
    op.execute("ALTER TABLE billing.leases DROP COLUMN customer_class")  # contract: only 0009 and later use it
    op.execute("ALTER TABLE billing.rooms DROP COLUMN customer_class")  # contract: only 0009 and later use it
    op.execute("ALTER TABLE billing.tariffs DROP CONSTRAINT one_version_per_instant")
    op.execute("DELETE FROM billing.tariffs WHERE plan_id <> 'default'")
    op.execute(
        "ALTER TABLE billing.tariffs ADD CONSTRAINT tariffs_utility_effective_from_key UNIQUE (utility, effective_from)"
    )
    op.execute("ALTER TABLE billing.tariffs DROP COLUMN plan_id")  # contract: only 0009 and later use it
    op.execute("DROP TABLE billing.tariff_plans")  # contract: only 0009 and later use it
