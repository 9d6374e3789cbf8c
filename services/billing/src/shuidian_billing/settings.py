"""Billing settings (env prefix BILLING_)."""

from __future__ import annotations

from decimal import Decimal

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
