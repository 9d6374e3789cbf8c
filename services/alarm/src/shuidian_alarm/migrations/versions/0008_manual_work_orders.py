"""Work orders opened by hand: no alarm behind them, a description and who opened them."""

from alembic import op

revision = "0008_manual_work_orders"
down_revision = "0007_occupancy_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE alarm.work_orders ALTER COLUMN alarm_id DROP NOT NULL, "
        "ADD COLUMN description text, ADD COLUMN opened_by text NOT NULL DEFAULT 'system'"
    )


def downgrade() -> None:
    op.execute("DELETE FROM alarm.work_order_notes n USING alarm.work_orders w WHERE n.work_order_id = w.work_order_id AND w.alarm_id IS NULL")
    op.execute("DELETE FROM alarm.work_orders WHERE alarm_id IS NULL")
    op.execute("ALTER TABLE alarm.work_orders ALTER COLUMN alarm_id SET NOT NULL, DROP COLUMN description, DROP COLUMN opened_by")
