"""Rule configuration and state, the meter → premises map, alarm context and escalation,
notification subscriptions with their persisted delivery queue and log, work orders."""

from alembic import op

revision = "0002_engine"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Alarm does not own premises: this is a copy of what a meter belongs to, filled through the API.
    op.execute("""
    CREATE TABLE alarm.targets (
        meter_id text PRIMARY KEY,
        gateway_id text,
        account_id text,
        model text,
        estate text,
        building text,
        room text,
        tenant_id text,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX targets_by_gateway ON alarm.targets (gateway_id)")
    op.execute("CREATE INDEX targets_by_account ON alarm.targets (account_id)")
    op.execute("""
    CREATE TABLE alarm.rule_configs (
        scope_level text NOT NULL CHECK (scope_level IN ('default', 'estate', 'building', 'model', 'meter')),
        scope_key text NOT NULL,
        slot text NOT NULL,
        enabled boolean NOT NULL DEFAULT true,
        rule jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scope_level, scope_key, slot)
    )""")
    # One row per source (meter or gateway) holding every rule slot's state; `pending` marks states that
    # mature with time alone and must be fed ticks; `version` lets replicas cache states safely. The states
    # are JSON kept as text: written on every reading, and PostgreSQL need not parse what only we read.
    op.execute("""
    CREATE TABLE alarm.rule_states (
        source_id text PRIMARY KEY,
        states text NOT NULL,
        pending boolean NOT NULL DEFAULT false,
        version bigint NOT NULL DEFAULT 1,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX rule_states_pending ON alarm.rule_states (source_id) WHERE pending")
    # Balance events carry a per-account sequence: an older one than the newest seen is ignored.
    op.execute("""
    CREATE TABLE alarm.account_sequences (
        account_id text PRIMARY KEY,
        sequence bigint NOT NULL
    )""")
    op.execute("""
    ALTER TABLE alarm.alarms
        ADD COLUMN meter_id text,
        ADD COLUMN gateway_id text,
        ADD COLUMN estate text,
        ADD COLUMN building text,
        ADD COLUMN room text,
        ADD COLUMN tenant_id text,
        ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN escalation_level integer NOT NULL DEFAULT 0,
        ADD COLUMN escalated_at timestamptz
    """)
    op.execute("CREATE INDEX alarms_by_estate ON alarm.alarms (estate, raised_at DESC)")
    op.execute("CREATE INDEX alarms_by_building ON alarm.alarms (building, raised_at DESC)")
    op.execute("CREATE INDEX alarms_by_source ON alarm.alarms (source_id, raised_at DESC)")
    op.execute("CREATE INDEX alarms_unacknowledged ON alarm.alarms (raised_at) WHERE state = 'active'")
    op.execute("""
    CREATE TABLE alarm.subscriptions (
        subscription_id uuid PRIMARY KEY,
        audience text NOT NULL CHECK (audience IN ('staff', 'tenant')),
        role text,
        estate text,
        tenant_id text,
        channel text NOT NULL CHECK (channel IN ('webhook', 'email', 'sms', 'mqtt')),
        address text NOT NULL,
        secret text,
        language text NOT NULL DEFAULT 'zh-CN' CHECK (language IN ('zh-CN', 'en')),
        min_severity text NOT NULL DEFAULT 'warning',
        alarm_types text[],
        quiet_start time,
        quiet_end time,
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((audience = 'staff') = (role IS NOT NULL)),
        CHECK ((audience = 'tenant') = (tenant_id IS NOT NULL))
    )""")
    # The delivery queue: one row per (alarm event, subscription), durable across restarts.
    op.execute("""
    CREATE TABLE alarm.notifications (
        notification_id uuid PRIMARY KEY,
        alarm_id uuid NOT NULL REFERENCES alarm.alarms,
        subscription_id uuid NOT NULL REFERENCES alarm.subscriptions ON DELETE CASCADE,
        event text NOT NULL,
        channel text NOT NULL,
        address text NOT NULL,
        subject text NOT NULL,
        body text NOT NULL,
        payload jsonb NOT NULL,
        status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_status_code integer,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
    )""")
    op.execute("CREATE INDEX notifications_due ON alarm.notifications (next_attempt_at) WHERE status = 'pending'")
    op.execute("CREATE INDEX notifications_by_alarm ON alarm.notifications (alarm_id)")
    op.execute("""
    CREATE TABLE alarm.delivery_attempts (
        notification_id uuid NOT NULL REFERENCES alarm.notifications ON DELETE CASCADE,
        attempt integer NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        ok boolean NOT NULL,
        status_code integer,
        detail text NOT NULL DEFAULT '',
        PRIMARY KEY (notification_id, attempt)
    )""")
    op.execute("""
    CREATE TABLE alarm.work_orders (
        work_order_id uuid PRIMARY KEY,
        alarm_id uuid NOT NULL UNIQUE REFERENCES alarm.alarms,
        device_id text NOT NULL,
        fault_type text NOT NULL,
        estate text,
        building text,
        assignee text,
        status text NOT NULL DEFAULT 'open'
            CHECK (status IN ('open', 'assigned', 'in_progress', 'resolved', 'closed')),
        closing_cause text,
        opened_at timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz,
        closed_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX work_orders_by_estate ON alarm.work_orders (estate, opened_at DESC)")
    op.execute("""
    CREATE TABLE alarm.work_order_notes (
        work_order_id uuid NOT NULL REFERENCES alarm.work_orders,
        at timestamptz NOT NULL DEFAULT now(),
        author text NOT NULL,
        note text NOT NULL
    )""")
