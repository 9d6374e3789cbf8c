"""Billing's newest `TenantContact` per tenant: the phone alarm texts, and when billing's record changed.

Kept for every tenant, with settings or not: `changed_at` is how alarm ignores a contact older than the one it
applied (newest wins, so redelivery and reordering are harmless), and a tenant's first settings save that carries no
phone takes it from here.
"""

from alembic import op

revision = "0006_tenant_contacts"
down_revision = "0005_tenant_settings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE alarm.tenant_contacts (
        tenant_id text PRIMARY KEY,
        phone text,
        changed_at timestamptz NOT NULL,
        message_id uuid NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )""")

