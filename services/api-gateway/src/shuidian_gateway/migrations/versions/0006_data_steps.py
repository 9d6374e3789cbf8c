"""One-time data steps, recorded: a step the gateway must run once against live services (not a schema change,
so not an Alembic step: it needs alarm to answer) is done when its row is here, and a start finds it and does nothing.

The first is `notification-settings-to-alarm` version 1: the tenants' notification settings the gateway kept
before alarm owned them (`gateway.notification_settings`), pushed to alarm once.
"""

from alembic import op

revision = "0006_data_steps"
down_revision = "0005_login_backoff"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE gateway.data_steps (
        name text NOT NULL,
        version integer NOT NULL,
        done_at timestamptz NOT NULL DEFAULT now(),
        outcome text NOT NULL,
        PRIMARY KEY (name, version)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE gateway.data_steps")  # contract: only 0006 and later use it
