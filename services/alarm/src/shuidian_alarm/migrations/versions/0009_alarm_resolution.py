"""Alarms carry a version (optimistic concurrency for staff actions) and a hand resolution; every staff
action on an alarm is kept in `alarm.alarm_actions` (who, what, why, at which version)."""

from alembic import op

revision = "0009_alarm_resolution"
down_revision = "0008_manual_work_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE alarm.alarms ADD COLUMN version integer NOT NULL DEFAULT 1, "
        "ADD COLUMN resolved_at timestamptz, ADD COLUMN resolved_by text, ADD COLUMN resolution text"
    )
    # Every change bumps the version, whoever makes it (a re-trigger, an escalation, a clear, a staff action),
    # so a client's `expected_version` is stale exactly when the alarm changed since it read it.
    op.execute("""
    CREATE FUNCTION alarm.bump_alarm_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.version := OLD.version + 1;
        RETURN NEW;
    END $$""")
    op.execute(
        "CREATE TRIGGER alarms_version BEFORE UPDATE ON alarm.alarms "
        "FOR EACH ROW EXECUTE FUNCTION alarm.bump_alarm_version()"
    )
    op.execute("""
    CREATE TABLE alarm.alarm_actions (
        action_id bigserial PRIMARY KEY,
        alarm_id uuid NOT NULL REFERENCES alarm.alarms,
        action text NOT NULL,
        actor text NOT NULL,
        reason text,
        version integer NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX alarm_actions_by_alarm ON alarm.alarm_actions (alarm_id, action_id)")


def downgrade() -> None:
    # Downgrade only: it removes what this revision added, which no earlier release ever used.
    op.execute("DROP TABLE alarm.alarm_actions")  # contract: only 0009 and later use it
    op.execute("DROP TRIGGER alarms_version ON alarm.alarms")
    op.execute("DROP FUNCTION alarm.bump_alarm_version()")
    op.execute(
        "ALTER TABLE alarm.alarms DROP COLUMN version, DROP COLUMN resolved_at, "  # contract: only 0009 and later use them
        "DROP COLUMN resolved_by, DROP COLUMN resolution"  # contract: only 0009 and later use them
    )
