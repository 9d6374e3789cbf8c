"""Insights: the reading archive (monthly range partitions), daily frozen values, hourly profiles,
households, line-loss groups and days, habit runs and the job ledger."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("insights"))
    # 抄表记录: every register value read. The primary key makes a replayed reading a no-op and is the
    # index a meter's year is read through; partitions are months (adapters/archive.py creates them
    # ahead and drops those older than the retention).
    op.execute("""
    CREATE TABLE insights.readings (
        meter_id text NOT NULL,
        register text NOT NULL,
        read_at timestamptz NOT NULL,
        value numeric NOT NULL,
        reading_id uuid NOT NULL,
        PRIMARY KEY (meter_id, register, read_at)
    ) PARTITION BY RANGE (read_at)""")
    # 日冻结: each register's value at each local midnight, from the last sample at or before it (traced
    # by read_at and reading_id); a month's 月冻结 is the day value at the month's first midnight.
    op.execute("""
    CREATE TABLE insights.frozen (
        meter_id text NOT NULL,
        register text NOT NULL,
        day date NOT NULL,
        value numeric NOT NULL,
        read_at timestamptz NOT NULL,
        reading_id uuid NOT NULL,
        PRIMARY KEY (meter_id, register, day)
    )""")
    # Use per local hour of day: one row per meter and day, and its month's sum (what the what-if and the
    # habit clusters read).
    op.execute("""
    CREATE TABLE insights.daily_profiles (
        meter_id text NOT NULL,
        day date NOT NULL,
        by_hour numeric[] NOT NULL,
        hours_known smallint NOT NULL,
        PRIMARY KEY (meter_id, day)
    )""")
    op.execute("""
    CREATE TABLE insights.monthly_profiles (
        meter_id text NOT NULL,
        month text NOT NULL,
        by_hour numeric[] NOT NULL,
        days integer NOT NULL,
        PRIMARY KEY (meter_id, month)
    )""")
    op.execute("""
    CREATE TABLE insights.households (
        account_id text PRIMARY KEY,
        estate_id text NOT NULL,
        room_id text NOT NULL,
        tenant_id text,
        leased boolean NOT NULL,
        building_id text,
        area_m2 numeric,
        household_size integer,
        since timestamptz NOT NULL
    )""")
    op.execute("CREATE INDEX households_by_estate ON insights.households (estate_id)")
    op.execute("""
    CREATE TABLE insights.household_meters (
        meter_id text PRIMARY KEY,
        account_id text NOT NULL,
        room_id text NOT NULL,
        utility text NOT NULL
    )""")
    op.execute("CREATE INDEX household_meters_by_account ON insights.household_meters (account_id)")
    op.execute("CREATE INDEX household_meters_by_room ON insights.household_meters (room_id)")
    op.execute("""
    CREATE TABLE insights.line_loss_groups (
        group_id text PRIMARY KEY,
        master_meter_id text NOT NULL,
        sub_meter_ids text[] NOT NULL,
        threshold_pct numeric NOT NULL,
        min_completeness_pct numeric NOT NULL,
        estate_id text
    )""")
    op.execute("""
    CREATE TABLE insights.line_loss_days (
        group_id text NOT NULL,
        day date NOT NULL,
        master_quantity numeric,
        sub_quantity numeric NOT NULL,
        loss_quantity numeric,
        loss_pct numeric,
        completeness_pct numeric NOT NULL,
        judged boolean NOT NULL,
        exceeded boolean NOT NULL,
        PRIMARY KEY (group_id, day)
    )""")
    op.execute("""
    CREATE TABLE insights.habit_runs (
        utility text NOT NULL,
        estate_id text NOT NULL,
        month text NOT NULL,
        result jsonb NOT NULL,
        labels jsonb NOT NULL,
        computed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (utility, estate_id, month)
    )""")
    # A job's unit of work (e.g. `nightly` for a local day) is recorded when it committed: a restarted
    # job resumes at the first unit not done, and running a unit twice writes the same rows.
    op.execute("""
    CREATE TABLE insights.job_runs (
        job text NOT NULL,
        unit text NOT NULL,
        done_at timestamptz NOT NULL DEFAULT now(),
        seconds double precision NOT NULL,
        PRIMARY KEY (job, unit)
    )""")


def downgrade() -> None:
    op.execute("DROP SCHEMA insights CASCADE")
