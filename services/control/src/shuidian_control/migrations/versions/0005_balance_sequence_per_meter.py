"""The last balance event applied, per meter rather than per account: with separate water and
electricity purses one account's events concern different meters, so an event re-announced after
it was lost must still reach its meters although a later event of the other purse was applied."""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute("ALTER TABLE control.shadows ADD COLUMN balance_sequence bigint NOT NULL DEFAULT 0")
    op.execute(
        "UPDATE control.shadows s SET balance_sequence = l.last_sequence "
        "FROM control.account_balance_levels l WHERE s.account_id = l.account_id"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE control.shadows DROP COLUMN balance_sequence")
