"""A tenant's own notification settings, and the subscriptions they manage.

`alarm.tenant_settings` holds what the tenant chose in the app (versioned: the gateway's ETag / If-Match); version 0
is the default set alarm writes the first time it has something to tell a tenant who never saved any. The
subscriptions a tenant's settings manage are marked `managed_by = 'tenant_settings'`, at most one per channel;
staff-created subscriptions (`managed_by` NULL) are left alone.
"""

from alembic import op

revision = "0005_tenant_settings"
down_revision = "0004_room_occupancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE alarm.tenant_settings (
        tenant_id text PRIMARY KEY,
        settings jsonb NOT NULL,
        phone text,
        email text,
        version integer NOT NULL DEFAULT 0 CHECK (version >= 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("ALTER TABLE alarm.subscriptions ADD COLUMN managed_by text CHECK (managed_by IN ('tenant_settings'))")
    op.execute(
        "CREATE UNIQUE INDEX subscriptions_managed ON alarm.subscriptions (tenant_id, channel) "
        "WHERE managed_by IS NOT NULL"
    )
