"""Commands with their audit trail, relay/valve shadows, per-account balance sequence."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("control"))
    op.execute("""
    CREATE TABLE control.commands (
        command_id uuid PRIMARY KEY,
        meter_id text NOT NULL,
        kind text NOT NULL,
        state text NOT NULL,
        origin text NOT NULL,
        reason text NOT NULL,
        account_id text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        detail text NOT NULL DEFAULT '',
        request_frame text
    )""")
    op.execute("CREATE INDEX commands_meter_idx ON control.commands (meter_id, created_at DESC)")
    op.execute("CREATE INDEX commands_open_idx ON control.commands (expires_at) WHERE state IN ('pending', 'sent', 'acknowledged')")
    op.execute("""
    CREATE TABLE control.command_events (
        id bigserial PRIMARY KEY,
        command_id uuid NOT NULL REFERENCES control.commands,
        state text NOT NULL,
        detail text NOT NULL DEFAULT '',
        at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE control.shadows (
        meter_id text PRIMARY KEY,
        desired_relay text,
        reported_relay text,
        version bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE control.account_balance_levels (
        account_id text PRIMARY KEY,
        last_sequence bigint NOT NULL,
        level text NOT NULL
    )""")
