"""Single-use live tickets, and webhook deliveries that can be pruned.

`live_tickets_used` records the id (`jti`) of every live-stream ticket on its first use, with the
ticket's expiry: the primary key makes a second use fail on every replica; expired records are
deleted by the gateway's housekeeping.

The partial index serves the housekeeping that deletes delivered and dead deliveries past their
retention, oldest first. (`webhook_deliveries.state` keeps no default on purpose: a pre-0003 replica
logs a delivery only after its attempts, successful or not; with a default its row would take the
unique key as finished and stop the new replicas from delivering that event at all. Without one
its insert fails and the event is still delivered. See docs/api.md on upgrading across 0003.)
"""

from alembic import op

revision = "0004_live_tickets_and_retention"
down_revision = "0003_webhook_deliveries_once"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE gateway.live_tickets_used (
        ticket_id text PRIMARY KEY,
        expires_at timestamptz NOT NULL,
        used_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX live_tickets_used_expiry ON gateway.live_tickets_used (expires_at)")
    op.execute(
        "CREATE INDEX webhook_deliveries_finished ON gateway.webhook_deliveries (state, at) WHERE state <> 'pending'"
    )
