"""Policies (estates, buildings, keep-power, holds), deferred trips, schedules; command attempts and supply shadows."""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # Shadows hold supply states (closed: on, open: cut off) for relays and valves alike.
    op.execute("ALTER TABLE control.shadows RENAME COLUMN desired_relay TO desired_supply")
    op.execute("ALTER TABLE control.shadows RENAME COLUMN reported_relay TO reported_supply")
    op.execute("""
    ALTER TABLE control.shadows
        ADD COLUMN utility text NOT NULL DEFAULT 'electricity',
        ADD COLUMN account_id text,
        ADD COLUMN gateway_id text,
        ADD COLUMN online boolean,
        ADD COLUMN reported_at timestamptz
    """)
    op.execute("CREATE INDEX shadows_gateway_idx ON control.shadows (gateway_id)")
    op.execute("CREATE INDEX shadows_account_idx ON control.shadows (account_id)")
    op.execute("""
    ALTER TABLE control.commands
        ADD COLUMN attempt integer NOT NULL DEFAULT 1,
        ADD COLUMN next_attempt_at timestamptz,
        ADD COLUMN actor text NOT NULL DEFAULT 'system',
        ADD COLUMN parameters jsonb NOT NULL DEFAULT '{}',
        ADD COLUMN supply text,
        ADD COLUMN shadow_version bigint,
        ADD COLUMN response_frame text,
        ADD COLUMN batch_id uuid,
        ADD COLUMN seq bigserial
    """)
    op.execute("CREATE INDEX commands_meter_seq_idx ON control.commands (meter_id, seq DESC)")
    op.execute("CREATE INDEX commands_due_idx ON control.commands (next_attempt_at) WHERE state IN ('pending', 'sent', 'acknowledged')")
    op.execute("CREATE INDEX commands_created_idx ON control.commands (created_at DESC, command_id DESC)")
    op.execute("CREATE INDEX commands_state_idx ON control.commands (state, created_at DESC)")
    op.execute("""
    ALTER TABLE control.command_events
        ADD COLUMN attempt integer,
        ADD COLUMN actor text NOT NULL DEFAULT 'system',
        ADD COLUMN request_frame text,
        ADD COLUMN response_frame text
    """)
    op.execute("CREATE INDEX command_events_command_idx ON control.command_events (command_id, id)")
    op.execute("""
    CREATE TABLE control.estate_policies (
        estate_id text PRIMARY KEY,
        nights_start time,
        nights_end time,
        weekends boolean NOT NULL,
        holidays boolean NOT NULL,
        restore text NOT NULL,
        prepaid_water boolean NOT NULL,
        updated_by text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((nights_start IS NULL) = (nights_end IS NULL))
    )""")
    op.execute("""
    CREATE TABLE control.buildings (
        building_id text PRIMARY KEY,
        estate_id text,
        updated_by text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE control.building_meters (
        meter_id text PRIMARY KEY,
        building_id text NOT NULL REFERENCES control.buildings ON DELETE CASCADE
    )""")
    op.execute("CREATE INDEX building_meters_building_idx ON control.building_meters (building_id)")
    op.execute("""
    CREATE TABLE control.keep_power (
        scope text NOT NULL CHECK (scope IN ('household', 'estate')),
        subject text NOT NULL,
        reason text NOT NULL,
        note text NOT NULL DEFAULT '',
        set_by text NOT NULL,
        set_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scope, subject)
    )""")
    op.execute("""
    CREATE TABLE control.cutoff_holds (
        estate_id text PRIMARY KEY,
        reason text NOT NULL,
        until timestamptz,
        set_by text NOT NULL,
        set_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE control.policy_log (
        id bigserial PRIMARY KEY,
        subject text NOT NULL,
        action text NOT NULL,
        detail text NOT NULL,
        actor text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE control.deferrals (
        meter_id text PRIMARY KEY,
        account_id text,
        due_at timestamptz,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX deferrals_due_idx ON control.deferrals (due_at)")
    op.execute("""
    CREATE TABLE control.schedules (
        schedule_id uuid PRIMARY KEY,
        name text NOT NULL,
        building_id text,
        meters text[] NOT NULL DEFAULT '{}',
        kind text NOT NULL,
        parameters jsonb NOT NULL DEFAULT '{}',
        reason text NOT NULL DEFAULT '',
        ttl_seconds integer,
        at_local time,
        run_at timestamptz,
        command_id uuid UNIQUE,
        enabled boolean NOT NULL DEFAULT true,
        last_occurrence timestamptz,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((at_local IS NULL) <> (run_at IS NULL))
    )""")
