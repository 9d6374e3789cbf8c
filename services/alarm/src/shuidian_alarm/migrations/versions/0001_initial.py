"""Alarms: at most one open alarm per (source, type), enforced by a partial unique index."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("alarm"))
    op.execute("""
    CREATE TABLE alarm.alarms (
        alarm_id uuid PRIMARY KEY,
        source_id text NOT NULL,
        alarm_type text NOT NULL,
        severity text NOT NULL,
        state text NOT NULL CHECK (state IN ('active', 'acknowledged', 'cleared')),
        message_zh text NOT NULL,
        message_en text NOT NULL,
        details jsonb NOT NULL DEFAULT '{}',
        occurrences integer NOT NULL DEFAULT 1,
        raised_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        acknowledged_at timestamptz,
        acknowledged_by text,
        cleared_at timestamptz
    )""")
    op.execute(
        "CREATE UNIQUE INDEX alarms_one_open ON alarm.alarms (source_id, alarm_type) WHERE state <> 'cleared'"
    )
    op.execute("CREATE INDEX alarms_by_time ON alarm.alarms (raised_at DESC)")
