"""Gateway settings (env prefix GATEWAY_)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    http_port: int = 8000
    staff_api_key: SecretStr = SecretStr("dev-staff-key")
    collector_url: str = "http://127.0.0.1:8001"
    billing_url: str = "http://127.0.0.1:8002"
    control_url: str = "http://127.0.0.1:8003"
    alarm_url: str = "http://127.0.0.1:8004"
    upstream_timeout_seconds: float = 10.0

    def secret_fields(self) -> dict[str, SecretStr]:
        return {"staff_api_key": self.staff_api_key}
