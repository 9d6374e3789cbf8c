"""A month's total beside its hours, so a tenant's comparison reads one row per similar home."""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE insights.monthly_profiles ADD COLUMN total numeric")
    op.execute(
        "UPDATE insights.monthly_profiles p SET total = (SELECT sum(q) FROM unnest(p.by_hour) q) WHERE total IS NULL"
    )
    op.execute("ALTER TABLE insights.monthly_profiles ALTER COLUMN total SET NOT NULL")
