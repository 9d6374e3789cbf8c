"""The monthly report push: one row per household and month once its notice is in the outbox."""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("""
    CREATE TABLE insights.monthly_pushes (
        account_id text NOT NULL,
        month text NOT NULL,
        pushed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (month, account_id)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE insights.monthly_pushes")
