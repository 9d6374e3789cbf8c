"""Collector settings (env prefix COLLECTOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class CollectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore", frozen=True)

    http_port: int = 8001
    shard_index: int = Field(default=0, ge=0)
    shard_count: int = Field(default=1, ge=1)
    registry_refresh_seconds: float = 10.0
    confirm_attempts: int = 5
    confirm_interval_seconds: float = 0.3
