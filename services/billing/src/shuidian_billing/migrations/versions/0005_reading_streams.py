"""Where each gateway's stream of reading batches stands (the last sequence billed), and the gaps
seen in it with how they ended (docs/delivery.md)."""

from alembic import op

revision = "0005_reading_streams"
down_revision = "0004_level_reannounce"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE billing.reading_streams (
        gateway_id text NOT NULL,
        epoch text NOT NULL,
        last_sequence bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (gateway_id, epoch)
    )""")
    op.execute("""
    CREATE TABLE billing.reading_gaps (
        gateway_id text NOT NULL,
        epoch text NOT NULL,
        from_sequence bigint NOT NULL,
        to_sequence bigint NOT NULL,
        state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'replayed', 'lost')),
        seen_at timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz,
        PRIMARY KEY (gateway_id, epoch, from_sequence)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE billing.reading_gaps")
    op.execute("DROP TABLE billing.reading_streams")
