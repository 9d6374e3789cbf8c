"""Control's settings (env prefix CONTROL_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shuidian_shared.messages import CommandKind
from shuidian_shared.settings import ServiceSettings


class ControlSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONTROL_", extra="ignore", frozen=True)

    http_port: int = 8003
    command_ttl_seconds: int = 600
    restore_command: CommandKind = CommandKind.DIRECT_CLOSE
    expiry_check_seconds: float = 5.0
