"""Frozen values and daily profiles in monthly range partitions, monthly profiles in yearly ones, each with a
retention (adapters/archive.py keeps them); a BRIN index on the archive's read_at, so the nightly job reads a
day's samples instead of scanning whole monthly partitions.

Existing rows move into the new tables' partitions (created for every month/year present)."""

from alembic import op

revision = "0004"
down_revision = "0003"

# (table, partition key, key column's DDL type, "month" or "year", the columns and primary key)
TABLES = {
    "frozen": (
        "day",
        "month",
        """meter_id text NOT NULL, register text NOT NULL, day date NOT NULL, value numeric NOT NULL,
        read_at timestamptz NOT NULL, reading_id uuid NOT NULL, PRIMARY KEY (meter_id, register, day)""",
    ),
    "daily_profiles": (
        "day",
        "month",
        """meter_id text NOT NULL, day date NOT NULL, by_hour numeric[] NOT NULL, hours_known smallint NOT NULL,
        PRIMARY KEY (meter_id, day)""",
    ),
    "monthly_profiles": (
        "month",
        "year",
        """meter_id text NOT NULL, month text NOT NULL, by_hour numeric[] NOT NULL, days integer NOT NULL,
        total numeric NOT NULL, PRIMARY KEY (meter_id, month)""",
    ),
}


def upgrade() -> None:
    op.execute("CREATE INDEX readings_by_time ON insights.readings USING brin (read_at)")
    for table, (key, step, columns) in TABLES.items():
        op.execute(f"ALTER TABLE insights.{table} RENAME TO {table}_unpartitioned")
        op.execute(f"ALTER INDEX insights.{table}_pkey RENAME TO {table}_unpartitioned_pkey")
        op.execute(f"CREATE TABLE insights.{table} ({columns}) PARTITION BY RANGE ({key})")
        if step == "month":
            bounds = (
                f"SELECT DISTINCT to_char({key}, 'YYYYMM') AS suffix, date_trunc('month', {key})::date AS lo, "
                f"(date_trunc('month', {key}) + interval '1 month')::date AS hi FROM insights.{table}_unpartitioned"
            )
        else:
            bounds = (
                f"SELECT DISTINCT left({key}, 4) AS suffix, left({key}, 4) || '-01' AS lo, "
                f"(left({key}, 4)::int + 1)::text || '-01' AS hi FROM insights.{table}_unpartitioned"
            )
        op.execute(f"""
        DO $$
        DECLARE b record;
        BEGIN
            FOR b IN {bounds} LOOP
                EXECUTE format('CREATE TABLE insights.%I PARTITION OF insights.{table} FOR VALUES FROM (%L) TO (%L)',
                               '{table}_' || b.suffix, b.lo, b.hi);
            END LOOP;
        END $$""")
        op.execute(f"INSERT INTO insights.{table} SELECT * FROM insights.{table}_unpartitioned")
        op.execute(f"DROP TABLE insights.{table}_unpartitioned")


def downgrade() -> None:
    op.execute("DROP INDEX insights.readings_by_time")
    for table in TABLES:
        op.execute(f"CREATE TABLE insights.{table}_flat (LIKE insights.{table} INCLUDING ALL)")
        op.execute(f"INSERT INTO insights.{table}_flat SELECT * FROM insights.{table}")
        op.execute(f"DROP TABLE insights.{table}")
        op.execute(f"ALTER TABLE insights.{table}_flat RENAME TO {table}")
