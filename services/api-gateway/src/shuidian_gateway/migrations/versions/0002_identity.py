"""Identity: users and roles, refresh-token families, integrator API keys, webhook subscriptions,
stored idempotent responses, tenants' notification settings; the audit log learns who and from where."""

from alembic import op

revision = "0002_identity"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE gateway.users (
        user_id uuid PRIMARY KEY,
        username text NOT NULL UNIQUE,
        password_hash text NOT NULL,
        role text NOT NULL CHECK (role IN ('system_admin', 'estate_manager', 'cashier', 'maintenance', 'finance', 'tenant')),
        estates text[] NOT NULL DEFAULT '{}',
        tenant_id text,
        display_name text NOT NULL DEFAULT '',
        active boolean NOT NULL DEFAULT true,
        failed_logins integer NOT NULL DEFAULT 0,
        locked_until timestamptz,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((role = 'tenant') = (tenant_id IS NOT NULL))
    )""")
    op.execute("""
    CREATE TABLE gateway.refresh_tokens (
        token_hash text PRIMARY KEY,
        family_id uuid NOT NULL,
        user_id uuid NOT NULL REFERENCES gateway.users ON DELETE CASCADE,
        expires_at timestamptz NOT NULL,
        used_at timestamptz,
        revoked_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("CREATE INDEX refresh_tokens_by_family ON gateway.refresh_tokens (family_id)")
    op.execute("""
    CREATE TABLE gateway.api_keys (
        key_id uuid PRIMARY KEY,
        prefix text NOT NULL UNIQUE,
        key_hash text NOT NULL,
        name text NOT NULL,
        scopes text[] NOT NULL,
        estates text[] NOT NULL DEFAULT '{}',
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz,
        last_used_at timestamptz
    )""")
    op.execute("""
    CREATE TABLE gateway.webhooks (
        webhook_id uuid PRIMARY KEY,
        owner text NOT NULL,
        url text NOT NULL,
        events text[] NOT NULL,
        secret text NOT NULL,
        active boolean NOT NULL DEFAULT true,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE gateway.webhook_deliveries (
        delivery_id bigserial PRIMARY KEY,
        webhook_id uuid NOT NULL REFERENCES gateway.webhooks ON DELETE CASCADE,
        message_id uuid NOT NULL,
        event text NOT NULL,
        status integer,
        error text,
        attempts integer NOT NULL DEFAULT 1,
        at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE gateway.idempotency (
        principal text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        status integer,
        body bytea,
        media_type text,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (principal, key)
    )""")
    op.execute("""
    CREATE TABLE gateway.notification_settings (
        tenant_id text PRIMARY KEY,
        settings jsonb NOT NULL,
        version integer NOT NULL DEFAULT 1,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("ALTER TABLE gateway.audit_log ADD COLUMN user_agent text, ADD COLUMN role text")
