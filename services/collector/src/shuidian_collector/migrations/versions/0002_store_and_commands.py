"""Device state keeps its gateway and the reason it is offline; commands are executed once per
(command id, attempt) and keep their published result for redelivered duplicates."""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE collector.device_state ADD COLUMN gateway_id text, ADD COLUMN reason text")
    op.execute("ALTER TABLE collector.executed_commands ADD COLUMN attempt integer NOT NULL DEFAULT 1")
    op.execute("ALTER TABLE collector.executed_commands ADD COLUMN result text")
    op.execute("ALTER TABLE collector.executed_commands DROP CONSTRAINT executed_commands_pkey")
    op.execute("ALTER TABLE collector.executed_commands ADD PRIMARY KEY (command_id, attempt)")
