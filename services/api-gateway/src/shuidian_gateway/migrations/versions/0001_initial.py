"""Audit log of every write through the gateway."""

from alembic import op

from shuidian_kit.outbox import outbox_ddl

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(outbox_ddl("gateway"))
    op.execute("""
    CREATE TABLE gateway.audit_log (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        principal text NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        status integer NOT NULL,
        client_address text,
        idempotency_key text
    )""")
