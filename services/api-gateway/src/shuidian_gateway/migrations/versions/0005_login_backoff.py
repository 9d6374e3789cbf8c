"""Sign-in back-off per user instead of a lock-out, and per-address attempt counters every replica shares.

`users.retry_at` is the earliest next sign-in attempt of a user after repeated failures (the wait
doubles per failure, up to a cap); `locked_until` is no longer set, and is cleared so no user stays
locked out by the old rule. `login_attempts` counts sign-in attempts per client address and minute,
in the database, so the limit holds however many gateway replicas answer; old minutes are deleted
as new ones are counted.
"""

from alembic import op

revision = "0005_login_backoff"
down_revision = "0004_live_tickets_and_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE gateway.users ADD COLUMN retry_at timestamptz")
    op.execute("UPDATE gateway.users SET locked_until = NULL WHERE locked_until IS NOT NULL")
    op.execute("""
    CREATE TABLE gateway.login_attempts (
        address text NOT NULL,
        minute timestamptz NOT NULL,
        attempts integer NOT NULL,
        PRIMARY KEY (address, minute)
    )""")
    op.execute("CREATE INDEX login_attempts_minute ON gateway.login_attempts (minute)")
