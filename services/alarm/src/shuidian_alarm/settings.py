"""Alarm's settings (env prefix ALARM_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class AlarmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ALARM_", extra="ignore", frozen=True)

    http_port: int = 8004
