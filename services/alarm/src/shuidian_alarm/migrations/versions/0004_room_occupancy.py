"""Billing's newest `RoomOccupancy` per room: whether it is leased and which meters supply it.

Alarm turns it into each meter's lease status (the vacant-usage rule). A meter's room is the newest occupancy
that lists it, so a meter unbound from one room and bound to another ends in the right one whatever order the
two rooms' messages arrive in.
"""

from alembic import op

revision = "0004_room_occupancy"
down_revision = "0003_rule_states_fillfactor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE alarm.room_occupancy (
        room_id text PRIMARY KEY,
        estate_id text NOT NULL,
        leased boolean NOT NULL,
        since timestamptz NOT NULL,
        occurred_at timestamptz NOT NULL,
        message_id uuid NOT NULL,
        meters text[] NOT NULL
    )""")
    op.execute("CREATE INDEX room_occupancy_meters ON alarm.room_occupancy USING gin (meters)")
