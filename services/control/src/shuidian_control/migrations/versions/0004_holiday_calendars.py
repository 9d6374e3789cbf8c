"""Operator-published holiday arrangements (State Council notices), one row per year, over the library's data."""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("""
    CREATE TABLE control.holiday_calendars (
        year integer PRIMARY KEY CHECK (year BETWEEN 2000 AND 2200),
        holidays date[] NOT NULL,
        adjusted_workdays date[] NOT NULL,
        notice text NOT NULL,
        published_by text NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now()
    )
    """)

