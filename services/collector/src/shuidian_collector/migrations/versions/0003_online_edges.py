"""Online/offline edges per meter, for availability over a window (the device online rate report)."""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("""
    CREATE TABLE collector.online_edges (
        id bigserial PRIMARY KEY,
        meter_id text NOT NULL,
        gateway_id text,
        online boolean NOT NULL,
        at timestamptz NOT NULL,
        reason text
    )""")
    op.execute("CREATE INDEX online_edges_meter_at_idx ON collector.online_edges (meter_id, at)")
    op.execute("CREATE INDEX online_edges_at_idx ON collector.online_edges (at)")
    # What is known so far: each meter's current state, since its last update.
    op.execute("""
    INSERT INTO collector.online_edges (meter_id, gateway_id, online, at, reason)
    SELECT meter_id, gateway_id, online, updated_at, reason FROM collector.device_state
    """)
