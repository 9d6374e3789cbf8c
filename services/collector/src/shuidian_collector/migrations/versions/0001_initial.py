"""Device registry (gateways, buses, meters), device state, executed commands."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("collector"))
    op.execute("""
    CREATE TABLE collector.gateways (
        gateway_id text PRIMARY KEY,
        name text NOT NULL DEFAULT '',
        shard integer,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE collector.buses (
        bus_id text PRIMARY KEY,
        gateway_id text NOT NULL REFERENCES collector.gateways ON DELETE CASCADE,
        host text NOT NULL,
        port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
        protocol text NOT NULL,
        baud integer NOT NULL DEFAULT 2400,
        timeout_ms integer NOT NULL DEFAULT 1000,
        retries integer NOT NULL DEFAULT 1
    )""")
    op.execute("""
    CREATE TABLE collector.meters (
        meter_id text PRIMARY KEY,
        bus_id text NOT NULL REFERENCES collector.buses ON DELETE CASCADE,
        address text NOT NULL,
        model text NOT NULL,
        utility text NOT NULL CHECK (utility IN ('electricity', 'water')),
        poll_interval_s integer NOT NULL DEFAULT 60 CHECK (poll_interval_s > 0),
        enabled boolean NOT NULL DEFAULT true,
        UNIQUE (bus_id, address)
    )""")
    op.execute("""
    CREATE TABLE collector.device_state (
        meter_id text PRIMARY KEY,
        online boolean NOT NULL,
        relay text,
        valve text,
        keep_power boolean,
        last_reading_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE collector.executed_commands (
        command_id uuid PRIMARY KEY,
        meter_id text NOT NULL,
        kind text NOT NULL,
        status text NOT NULL,
        detail text NOT NULL DEFAULT '',
        received_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )""")
