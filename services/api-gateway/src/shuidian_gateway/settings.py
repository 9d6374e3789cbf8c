"""Gateway settings (env prefix GATEWAY_)."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shuidian_kit.urlguard import IPNetwork, UrlPolicy
from shuidian_shared.settings import ServiceSettings

DEV_JWT_SECRET = "dev-only-jwt-secret-do-not-use-in-production"
DEV_WEBHOOK_SECRET_KEY = "dev-only-webhook-secret-key-do-not-use-in-production"
MIN_JWT_SECRET_BYTES = 32


def proxy_networks(value: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip())


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    http_port: int = 8000
    # The bootstrap system-admin API key: the first administrator creates users and API keys with it.
    staff_api_key: SecretStr = SecretStr("dev-staff-key")
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_issuer: str = "shuidian"
    access_token_seconds: int = Field(default=900, ge=30, le=3600)
    refresh_token_seconds: int = Field(default=14 * 24 * 3600, ge=300)
    login_max_failures: int = Field(
        default=5, ge=1, description="consecutive failed sign-ins of a user before each further attempt must wait"
    )
    login_backoff_seconds: float = Field(
        default=1.0, gt=0, description="the first wait after login_max_failures failures; doubles per further failure"
    )
    login_backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="the longest wait between two sign-in attempts of one user"
    )
    login_attempts_per_minute: int = Field(
        default=20, ge=1, description="per client address, counted in PostgreSQL across every replica"
    )
    trusted_proxies: str = Field(
        default="",
        description="comma-separated networks (CIDR) of reverse proxies whose X-Forwarded-For is believed; "
        "empty: the connecting address is the client",
    )
    cors_origins: str = Field(
        default="",
        description="comma-separated origins (scheme://host[:port]) of browser clients served from another origin; "
        "empty: no cross-origin access",
    )
    scope_cache_seconds: float = Field(default=5.0, ge=0)
    balance_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="oldest balance a tenant read may serve (a newer BalanceEvent refreshes)"
    )
    usage_today_cache_seconds: float = Field(default=15.0, ge=0, le=300, description="oldest 'today's usage' served")
    webhook_timeout_seconds: float = Field(
        default=5.0, gt=0, description="a whole delivery attempt (connect, send, every byte of the answer)"
    )
    webhook_secret_key: SecretStr = Field(
        default=SecretStr(DEV_WEBHOOK_SECRET_KEY),
        description="key material sealing webhook signing secrets at rest (AES-256-GCM); same on every replica",
    )
    webhook_lease_seconds: float = Field(
        default=30.0, gt=0, description="a claimed delivery returns to the queue after this if its replica died"
    )
    webhook_allowed_networks: str = Field(
        default="",
        description="receivers on premises webhooks may reach although their address is loopback, private or "
        "link-local: comma-separated networks (CIDR) and/or host:port; empty allows public addresses only",
    )
    webhook_backoff_seconds: float = Field(default=1.0, ge=0, description="first retry delay; doubles per attempt")
    webhook_poll_seconds: float = Field(default=1.0, gt=0, description="how often due retries are looked for")
    live_heartbeat_seconds: float = Field(default=15.0, gt=0, description="idle SSE streams get a comment this often")
    live_ticket_seconds: int = Field(
        default=30, ge=5, le=120, description="how long a live-stream ticket can be used (once) to connect"
    )
    live_resume_seconds: float = Field(
        default=120.0, ge=0, le=3600, description="how long a dropped event stream can resume with Last-Event-ID"
    )
    live_resume_frames: int = Field(
        default=50_000, ge=0, description="frames held for resumption at most (memory bound, about 1 KB each)"
    )
    webhook_delivered_retention_days: float = Field(
        default=7.0, gt=0, description="delivered webhook rows are deleted after this"
    )
    webhook_dead_retention_days: float = Field(default=30.0, gt=0, description="dead letters are deleted after this")
    housekeeping_seconds: float = Field(
        default=600.0, gt=0, description="how often old deliveries and used tickets are pruned (by one replica)"
    )
    collector_url: str = "http://127.0.0.1:8001"
    billing_url: str = "http://127.0.0.1:8002"
    control_url: str = "http://127.0.0.1:8003"
    alarm_url: str = "http://127.0.0.1:8004"
    insights_url: str = "http://127.0.0.1:8005"
    upstream_timeout_seconds: float = 10.0
    # httpcore scans its whole pool for every request: a small pool of busy keep-alive connections is faster.
    upstream_connections: int = Field(default=16, ge=1)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _valid_allow_list(cls, value: str) -> str:
        UrlPolicy.parse(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: str) -> str:
        proxy_networks(value)
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return proxy_networks(self.trusted_proxies)

    @property
    def webhook_policy(self) -> UrlPolicy:
        return UrlPolicy.parse(self.webhook_allowed_networks)

    def secret_fields(self) -> dict[str, SecretStr]:
        return {
            "staff_api_key": self.staff_api_key,
            "jwt_secret": self.jwt_secret,
            "webhook_secret_key": self.webhook_secret_key,
        }

    @model_validator(mode="before")
    @classmethod
    def _ephemeral_test_secret(cls, data: Any) -> Any:
        # A test run that configures no secret gets a random one per process, never the known dev value.
        if isinstance(data, dict) and data.get("environment") == "test":
            for name in ("jwt_secret", "webhook_secret_key"):
                if not data.get(name):
                    data = {**data, name: SecretStr(secrets.token_urlsafe(48))}
        return data

    @model_validator(mode="after")
    def _strong_jwt_secret(self) -> Self:
        secret = self.jwt_secret.get_secret_value()
        if self.environment != "dev" and (secret == DEV_JWT_SECRET or len(secret.encode()) < MIN_JWT_SECRET_BYTES):
            raise ValueError(f"GATEWAY_JWT_SECRET must be a random secret of at least {MIN_JWT_SECRET_BYTES} bytes")
        key = self.webhook_secret_key.get_secret_value()
        if self.environment != "dev" and (key == DEV_WEBHOOK_SECRET_KEY or len(key.encode()) < MIN_JWT_SECRET_BYTES):
            raise ValueError(
                f"GATEWAY_WEBHOOK_SECRET_KEY must be a random secret of at least {MIN_JWT_SECRET_BYTES} bytes"
            )
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError("GATEWAY_WEBHOOK_LEASE_SECONDS must exceed GATEWAY_WEBHOOK_TIMEOUT_SECONDS")
        return self
