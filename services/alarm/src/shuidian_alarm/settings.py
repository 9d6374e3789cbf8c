"""Alarm's settings (env prefix ALARM_)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shuidian_kit.urlguard import UrlPolicy
from shuidian_shared.settings import ServiceSettings

DEV_WEBHOOK_SECRET = "dev-only-webhook-secret-do-not-use"


class AlarmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ALARM_", extra="ignore", frozen=True)

    http_port: int = 8004
    # Evaluation allocates many short-lived states and decisions per batch: collecting them every
    # 50,000 allocations measured faster than billing's 10,000 (make bench BENCH=alarm).
    gc_young_threshold: int = Field(default=50_000, ge=700)
    tick_seconds: float = Field(default=15.0, gt=0, description="how often time-only conditions are re-judged")
    escalate_after_seconds: float = Field(default=1800.0, gt=0, description="unacknowledged this long → one step up")
    max_escalations: int = Field(default=2, ge=0)
    targets_cache_seconds: float = Field(
        default=30.0, ge=0, description="how soon another replica's target edits apply"
    )
    # Notification delivery (docs/alarm.md): a persisted queue with exponential back-off, then dead-letter.
    notify_poll_seconds: float = Field(default=1.0, gt=0)
    notify_max_attempts: int = Field(default=6, ge=1)
    notify_backoff_seconds: float = Field(default=5.0, gt=0)
    notify_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    notify_concurrency: int = Field(default=20, ge=1)
    # Webhooks are signed with the subscription's own secret, or this one when it has none.
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    # Webhook subscribers on premises whose address is loopback, private or link-local: comma-separated
    # networks (CIDR) and/or host:port. Empty: webhooks reach public addresses only.
    webhook_allowed_networks: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_sender: str = "alarm@shuidian.invalid"
    # SMS through an Aliyun-style provider (signed RPC GET); an empty access key id means not configured.
    sms_endpoint: str = "https://dysmsapi.aliyuncs.com/"
    sms_access_key_id: str = ""
    sms_access_key_secret: SecretStr = SecretStr("")
    sms_sign_name: str = "水电"
    sms_template_code: str = ""
    sms_region: str = "cn-hangzhou"

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _valid_allow_list(cls, value: str) -> str:
        UrlPolicy.parse(value)
        return value

    @property
    def webhook_policy(self) -> UrlPolicy:
        return UrlPolicy.parse(self.webhook_allowed_networks)

    def secret_fields(self) -> dict[str, SecretStr]:
        # The dev default is long enough for the length rule, so it is named here explicitly.
        weak = self.webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET and self.environment == "prod"
        return {"webhook_secret": SecretStr("") if weak else self.webhook_secret}
