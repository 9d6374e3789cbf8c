"""The meter's own keep-power mode in the shadow: desired (follows the 保电 flags) and reported (by the meter)."""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("""
    ALTER TABLE control.shadows
        ADD COLUMN desired_keep_power boolean,
        ADD COLUMN reported_keep_power boolean
    """)
    # Trips held until the meter's keep-power mode is confirmed off: pending, never sent (attempt 0).
    op.execute(
        "CREATE INDEX commands_held_idx ON control.commands (meter_id) WHERE state = 'pending' AND attempt = 0"
    )

