"""Premises and people (estates → buildings → floors → rooms, tenants, leases), effective-dated meter
bindings, tariff versions with components, per-household tier usage, the charge decomposition
behind every hourly accrual, subsidies, meter events and corrections (冲正)."""

from alembic import op

revision = "0002_premises"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE billing.estates (
        estate_id text PRIMARY KEY,
        name text NOT NULL,
        shared_balance boolean NOT NULL DEFAULT true,
        shared_basis text NOT NULL DEFAULT 'area' CHECK (shared_basis IN ('area', 'equal')),
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE billing.buildings (
        building_id text PRIMARY KEY,
        estate_id text NOT NULL REFERENCES billing.estates,
        name text NOT NULL
    )""")
    op.execute("""
    CREATE TABLE billing.floors (
        floor_id text PRIMARY KEY,
        building_id text NOT NULL REFERENCES billing.buildings,
        level int NOT NULL,
        UNIQUE (building_id, level)
    )""")
    op.execute("""
    CREATE TABLE billing.rooms (
        room_id text PRIMARY KEY,
        floor_id text NOT NULL REFERENCES billing.floors,
        code text NOT NULL UNIQUE,
        area_m2 numeric(10, 2) NOT NULL CHECK (area_m2 > 0),
        household_size int NOT NULL DEFAULT 1 CHECK (household_size >= 1)
    )""")
    op.execute("""
    CREATE TABLE billing.tenants (
        tenant_id text PRIMARY KEY,
        name text NOT NULL,
        phone text NOT NULL DEFAULT ''
    )""")
    op.execute("ALTER TABLE billing.accounts ADD COLUMN estate_id text REFERENCES billing.estates")
    # A lease covers [move_in, move_out) in local dates; the household's account pays for the
    # room's meters during it. Overlaps are refused by the service under a lock on the room.
    op.execute("""
    CREATE TABLE billing.leases (
        lease_id text PRIMARY KEY,
        tenant_id text NOT NULL REFERENCES billing.tenants,
        room_id text NOT NULL REFERENCES billing.rooms,
        account_id text NOT NULL REFERENCES billing.accounts,
        move_in date NOT NULL,
        move_out date,
        starts_at timestamptz NOT NULL,
        ends_at timestamptz,
        CHECK (move_out IS NULL OR move_out > move_in)
    )""")
    op.execute("CREATE INDEX leases_by_room ON billing.leases (room_id, starts_at)")
    op.execute("CREATE INDEX leases_by_tenant ON billing.leases (tenant_id)")
    # Bindings become effective-dated ([valid_from, valid_to), NULL = unbounded): a meter is bound to an account directly, to a room (the
    # account then follows the room's leases), or to an estate as a common meter (公摊).
    op.execute("ALTER TABLE billing.meter_bindings DROP CONSTRAINT meter_bindings_pkey")
    op.execute("ALTER TABLE billing.meter_bindings ALTER COLUMN account_id DROP NOT NULL")
    op.execute("""
    ALTER TABLE billing.meter_bindings
        ADD COLUMN binding_id bigserial PRIMARY KEY,
        ADD COLUMN room_id text REFERENCES billing.rooms,
        ADD COLUMN estate_id text REFERENCES billing.estates,
        ADD COLUMN valid_from timestamptz,
        ADD COLUMN valid_to timestamptz,
        ADD CONSTRAINT one_owner CHECK (num_nonnulls(account_id, room_id, estate_id) = 1),
        ADD CONSTRAINT ordered_validity CHECK (valid_to IS NULL OR valid_to > valid_from)""")
    op.execute("CREATE UNIQUE INDEX one_open_binding ON billing.meter_bindings (meter_id) WHERE valid_to IS NULL")
    op.execute("CREATE INDEX bindings_by_meter ON billing.meter_bindings (meter_id, valid_from)")
    op.execute("CREATE INDEX bindings_by_room ON billing.meter_bindings (room_id)")
    # Tariff versions: a row with components NULL is a flat price (unit_price), as before.
    op.execute("ALTER TABLE billing.tariffs ALTER COLUMN unit_price DROP NOT NULL")
    op.execute("ALTER TABLE billing.tariffs ADD COLUMN components jsonb")
    op.execute("ALTER TABLE billing.tariffs ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()")
    op.execute("ALTER TABLE billing.tariffs ADD CONSTRAINT priced CHECK (num_nonnulls(unit_price, components) = 1)")
    # Register regime per meter: CT ratio and wrap point live with the watermark. register_max keeps
    # the scale it was written with (unconstrained numeric): its last digit is the register's step.
    op.execute("""
    ALTER TABLE billing.watermarks
        ADD COLUMN multiplier numeric(12, 4) NOT NULL DEFAULT 1 CHECK (multiplier > 0),
        ADD COLUMN register_max numeric NOT NULL DEFAULT 999999.99 CHECK (register_max > 0)""")
    # A meter moved mid-hour accrues to two households: accruals and carries are per account.
    op.execute("ALTER TABLE billing.accruals DROP CONSTRAINT accruals_pkey")
    op.execute("ALTER TABLE billing.accruals ADD PRIMARY KEY (meter_id, hour, account_id)")
    # posted_through: the meter's last hour posted for the account; later amounts for it accrue
    # to the next open hour, so a meter never posts the same hour twice (bounded rows).
    op.execute(
        "ALTER TABLE billing.carries ADD COLUMN account_id text, ADD COLUMN utility text, "
        "ADD COLUMN posted_through timestamptz"
    )
    op.execute("""
    UPDATE billing.carries c SET account_id = b.account_id, utility = b.utility FROM billing.meter_bindings b
    WHERE b.meter_id = c.meter_id AND b.account_id IS NOT NULL""")
    op.execute("ALTER TABLE billing.carries ALTER COLUMN account_id SET NOT NULL, ALTER COLUMN utility SET NOT NULL")
    op.execute("ALTER TABLE billing.carries DROP CONSTRAINT carries_pkey")
    op.execute("ALTER TABLE billing.carries ADD PRIMARY KEY (meter_id, account_id)")
    op.execute("CREATE INDEX carries_by_account ON billing.carries (account_id)")
    # The decomposition of every accrual (and of the posted hour it became): which tariff
    # version, component, rate segment or tier, quantity and exact amount.
    op.execute("""
    CREATE TABLE billing.charge_lines (
        meter_id text NOT NULL,
        hour timestamptz NOT NULL,
        account_id text NOT NULL,
        tariff_id bigint NOT NULL,
        component text NOT NULL,
        label text NOT NULL,
        unit_price numeric(12, 6) NOT NULL,
        quantity numeric(20, 6) NOT NULL,
        amount numeric(24, 10) NOT NULL,
        register_from numeric(20, 6),
        register_to numeric(20, 6),
        first_sample timestamptz NOT NULL,
        last_sample timestamptz NOT NULL,
        PRIMARY KEY (meter_id, hour, account_id, tariff_id, component, label, unit_price)
    )""")
    op.execute("CREATE INDEX charge_lines_by_account ON billing.charge_lines (account_id, hour)")
    # Usage counted toward tier (阶梯) blocks, per household, utility and local period.
    op.execute("""
    CREATE TABLE billing.tier_usage (
        account_id text NOT NULL,
        utility text NOT NULL,
        period text NOT NULL CHECK (period IN ('month', 'year')),
        period_start timestamptz NOT NULL,
        quantity numeric(20, 6) NOT NULL,
        PRIMARY KEY (account_id, utility, period, period_start)
    )""")
    # Explicit meter events and every operator correction, with who and why.
    op.execute("""
    CREATE TABLE billing.meter_events (
        event_id bigserial PRIMARY KEY,
        meter_id text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('replaced', 'multiplier_changed', 'rollover')),
        at timestamptz NOT NULL,
        detail jsonb NOT NULL,
        billed numeric(20, 6) NOT NULL,
        operator text NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX meter_events_by_meter ON billing.meter_events (meter_id, at)")
    op.execute("ALTER TABLE billing.held_readings ADD COLUMN status text NOT NULL DEFAULT 'open'")
    op.execute("""
    CREATE TABLE billing.corrections (
        txn_id uuid PRIMARY KEY,
        reverses uuid NOT NULL UNIQUE,
        operator text NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE billing.subsidies (
        subsidy_id uuid PRIMARY KEY,
        account_id text NOT NULL REFERENCES billing.accounts,
        amount numeric(14, 2) NOT NULL CHECK (amount > 0),
        program text NOT NULL,
        idempotency_key text NOT NULL UNIQUE,
        fingerprint text NOT NULL,
        txn_id uuid NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    # Monthly runs (fixed fees and 公摊) post once per estate and month.
    op.execute("""
    CREATE TABLE billing.period_runs (
        estate_id text NOT NULL REFERENCES billing.estates,
        month date NOT NULL,
        summary jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (estate_id, month)
    )""")
    # Rows the reading path updates in place (watermarks, per-hour accruals, usage, decomposition):
    # free space on every page lets PostgreSQL update them without touching the indexes (HOT).
    for table in ("watermarks", "accruals", "usage_hourly", "charge_lines", "tier_usage", "carries", "accounts"):
        op.execute(f"ALTER TABLE billing.{table} SET (fillfactor = 70)")
    # Balance levels per purse: 'all' when water and electricity share one balance (水电一卡通).
    op.execute("""
    CREATE TABLE billing.purse_levels (
        account_id text NOT NULL REFERENCES billing.accounts,
        purse text NOT NULL CHECK (purse IN ('all', 'electricity', 'water')),
        level text NOT NULL DEFAULT 'ok',
        PRIMARY KEY (account_id, purse)
    )""")


def downgrade() -> None:
    raise NotImplementedError("billing migrations are forward-only")
