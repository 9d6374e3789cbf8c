"""Webhooks delivered once across replicas, and their signing secrets sealed at rest.

`webhook_deliveries` becomes the delivery queue as well as its log: one row per (subscription, event),
inserted by every replica that receives the event (the unique key keeps one), claimed by one replica
with FOR UPDATE SKIP LOCKED, retried with back-off, and left `dead` after the last attempt (the dead
letter, with its body, as before with its status and error). Rows written before this migration were
finished deliveries: they become `delivered` or `dead`; duplicates that several replicas logged for
one event keep one row (a delivered one if any).

`webhooks.secret_sealed` holds the AES-GCM sealed secret. The key lives in the gateway's settings, not
here, so the plaintext `secret` of existing rows is sealed (and cleared) by the gateway at start-up.
"""

from alembic import op

revision = "0003_webhook_deliveries_once"
down_revision = "0002_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE gateway.webhooks
        ADD COLUMN secret_sealed bytea,
        ALTER COLUMN secret DROP NOT NULL,
        ADD CONSTRAINT webhooks_secret_kept CHECK (secret IS NOT NULL OR secret_sealed IS NOT NULL)
    """)
    op.execute("""
    ALTER TABLE gateway.webhook_deliveries
        ADD COLUMN state text NOT NULL DEFAULT 'delivered',
        ADD COLUMN body bytea,
        ADD COLUMN next_attempt_at timestamptz,
        ADD COLUMN claimed_by text,
        ADD COLUMN finished_at timestamptz
    """)
    op.execute("""
    UPDATE gateway.webhook_deliveries
    SET state = CASE WHEN status BETWEEN 200 AND 299 THEN 'delivered' ELSE 'dead' END, finished_at = at
    """)
    op.execute("""
    DELETE FROM gateway.webhook_deliveries WHERE delivery_id IN (
        SELECT delivery_id FROM (
            SELECT delivery_id, row_number() OVER (
                PARTITION BY webhook_id, message_id ORDER BY (state = 'delivered') DESC, delivery_id
            ) AS n
            FROM gateway.webhook_deliveries
        ) ranked WHERE n > 1
    )""")
    op.execute("""
    ALTER TABLE gateway.webhook_deliveries
        ALTER COLUMN state DROP DEFAULT,
        ALTER COLUMN attempts SET DEFAULT 0,
        ADD CONSTRAINT webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'dead')),
        ADD CONSTRAINT webhook_deliveries_pending_due CHECK (state <> 'pending' OR next_attempt_at IS NOT NULL)
    """)
    op.execute("CREATE UNIQUE INDEX webhook_deliveries_once ON gateway.webhook_deliveries (webhook_id, message_id)")
    op.execute(
        "CREATE INDEX webhook_deliveries_due ON gateway.webhook_deliveries (next_attempt_at) WHERE state = 'pending'"
    )
