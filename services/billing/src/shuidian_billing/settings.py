"""Billing settings (env prefix BILLING_)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore", frozen=True)

    http_port: int = 8002
    flush_interval_seconds: float = 30.0
    # Leaving a level needs this much more than its threshold, so a balance hovering at a
    # threshold does not flap between cut-off and restore.
    restore_hysteresis: Decimal = Decimal("1.00")
    # A register that moves faster than this per hour is held for review, not billed.
    max_plausible_kwh_per_hour: Decimal = Decimal("60")
    max_plausible_m3_per_hour: Decimal = Decimal("10")
    # Online payments (docs/payments.md). A provider with an empty app id is not configured.
    wechat_app_id: str = ""
    wechat_mch_id: str = ""
    wechat_apiv3_key: SecretStr = SecretStr("")
    wechat_platform_public_key: str = ""  # PEM public key or platform certificate
    wechat_platform_serial: str = ""
    alipay_app_id: str = ""
    alipay_seller_id: str = ""
    alipay_public_key: str = ""  # PEM or the bare base64 key Alipay shows
    callback_max_skew_seconds: int = 300
    alipay_max_age_seconds: int = 90_000  # Alipay retries one notification for about 25 hours
    # Calling the providers (orders, queries, closes). Keys are PEM text or the path of a mounted
    # file holding it; a key that does not load fails the start. Base URLs point at emulators in tests.
    wechat_merchant_private_key: SecretStr = SecretStr("")  # apiclient_key.pem
    wechat_merchant_serial: str = ""  # serial number of the merchant API certificate
    wechat_api_base: str = "https://api.mch.weixin.qq.com"
    wechat_notify_url: str = ""  # public: https://<gateway>/v1/payments/notify/wechat
    alipay_app_private_key: SecretStr = SecretStr("")
    alipay_gateway_url: str = "https://openapi.alipay.com/gateway.do"
    alipay_notify_url: str = ""  # public: https://<gateway>/v1/payments/notify/alipay
    # Per-estate merchants (docs/payments.md): a JSON object, or the path of a mounted file holding one, of
    # merchant name → {"estates": [...], "wechat_app_id": …, "alipay_app_id": …, …} (the settings above without
    # the prefix; secrets inline, `env:VARIABLE` or a mounted file's path). Unlisted estates pay the default.
    merchants: str = ""
    provider_timeout_seconds: float = Field(default=10.0, gt=0)
    # An unpaid order expires after this long; the sweeper asks the provider about open orders whose
    # notification has not come `order_query_after_seconds` after creation, every `order_sweep_seconds`.
    order_expiry_minutes: int = Field(default=30, ge=1, le=120)
    order_query_after_seconds: float = Field(default=60.0, ge=0)
    order_sweep_seconds: float = Field(default=60.0, ge=0)  # 0 turns the sweeper off
    # The sandbox provider signs like WeChat Pay v3 with its own keys; None = on outside prod.
    sandbox_payments: bool | None = None
    sandbox_private_key: SecretStr = SecretStr("")  # PEM; generated per process when empty
    sandbox_apiv3_key: SecretStr = SecretStr("")  # 32 characters; generated when empty
    # This many notifications of one provider refused (bad signature, stale, malformed, unknown order) within
    # the window open one `callback_forged` review item — and so a payment_problem alarm — per window.
    forged_burst_threshold: int = Field(default=20, ge=1)
    forged_burst_window_seconds: int = Field(default=300, ge=10)
    # The reading worker bills every batch waiting, up to this many, in one transaction; the MQTT
    # handler waits while `queue_batches` are queued (back-pressure instead of unbounded memory).
    max_batches_per_transaction: int = 40
    lanes: int = Field(default=4, ge=1, le=16)
    queue_batches: int = 200
    # Billing replicas split the gateways between them by a stable hash of the gateway id: replica
    # `shard_index` of `shard_count` bills only its own gateways' batches, so every meter is billed
    # by one process, in arrival order. Replicas with the same shard share its load (and stand in
    # for each other) through one shared subscription.
    shard_index: int = Field(default=0, ge=0)
    shard_count: int = Field(default=1, ge=1, le=64)
    # Anti-entropy: every `level_reannounce_seconds`, each purse's last balance event is published
    # again while its level is not ok, or for `level_reannounce_hours` after it changed, so a
    # consumer that lost it (control, alarm) converges. Consumers skip what they already applied
    # (the event keeps its sequence and message id). 0 turns it off.
    level_reannounce_seconds: float = Field(default=300.0, ge=0)
    level_reannounce_hours: float = Field(default=24.0, gt=0)
    # A gap in a gateway's batch stream is asked for again and waited for this long, the batches
    # after it held unacknowledged, before it is recorded as lost and they are billed (docs/delivery.md).
    gap_wait_seconds: float = Field(default=30.0, gt=0)
    # Readings of a meter billing has no owner for are counted and listed (GET /v1/unknown-meters); with
    # this on, each such meter is also announced once per process as a ReadingHeld (reason unknown_meter).
    unknown_meter_notice: bool = False

    @model_validator(mode="after")
    def _shard_in_range(self) -> BillingSettings:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} must be below shard_count {self.shard_count}")
        return self
