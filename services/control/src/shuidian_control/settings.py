"""Control's settings (env prefix CONTROL_)."""

from __future__ import annotations

from datetime import time
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shuidian_shared.messages import CommandKind
from shuidian_shared.settings import ServiceSettings


class ControlSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONTROL_", extra="ignore", frozen=True)

    http_port: int = 8003
    command_ttl_seconds: int = Field(default=600, ge=10)
    # The default estate policy, used for estates without a stored policy (PUT /v1/estates/{id}/policy overrides).
    restore_command: CommandKind = CommandKind.DIRECT_CLOSE
    nights_start: time | None = time(22)
    nights_end: time | None = time(7)
    protect_weekends: bool = True
    protect_holidays: bool = True
    prepaid_water: bool = False

    @field_validator("nights_start", "nights_end", mode="before")
    @classmethod
    def _empty_is_no_night(cls, value: Any) -> Any:
        """`CONTROL_NIGHTS_START=` (empty) means no night window, as the README says."""
        return None if value == "" else value

    # Retries: a sent attempt without any result for `result_timeout` is re-sent; a failure without an answer
    # from the meter is retried after a back-off doubling from `retry_initial` up to `retry_max`, until the TTL.
    result_timeout_seconds: float = Field(default=30.0, gt=0)
    retry_initial_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    # Reconcile: a meter whose reported state differs from the desired one gets the desired state again, at most
    # once per `reconcile_interval`; the sweep looks at every diverged meter each `reconcile_sweep_seconds`.
    reconcile_interval_seconds: float = Field(default=300.0, gt=0)
    reconcile_sweep_seconds: float = Field(default=60.0, gt=0)
    # How often the housekeeping loop runs expiry, retries, due deferrals and schedules.
    tick_seconds: float = Field(default=1.0, gt=0)
    # A scheduled operation missed while control was down still runs if control is back within this grace.
    schedule_grace_seconds: int = Field(default=3600, ge=60)
