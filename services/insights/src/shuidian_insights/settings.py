"""Insights' settings (env prefix INSIGHTS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class InsightsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INSIGHTS_", extra="ignore", frozen=True)

    http_port: int = 8005
    billing_url: str = Field(default="http://127.0.0.1:8002", description="where tariffs and rooms are read")
    raw_retention_months: int = Field(default=13, ge=2, description="months of raw samples kept")
    frozen_retention_months: int = Field(default=60, ge=2, description="months of daily/monthly frozen values kept")
    profile_retention_months: int = Field(
        default=25, ge=14, description="months of daily hourly profiles kept (year-on-year needs 13 and this one)"
    )
    monthly_profile_retention_months: int = Field(
        default=120, ge=14, description="months of monthly profiles kept (whole years: partitions are years)"
    )
    job_interval_seconds: float = Field(default=600.0, gt=0, description="how often the nightly job looks for days")
    backfill_days: int = Field(default=62, ge=1, description="how far back the nightly job looks for days not done")
    tariff_cache_seconds: float = Field(default=300.0, ge=0)
    monthly_push_days: int = Field(
        default=3,
        ge=1,
        le=28,
        description="the month before's report notices go out in a month's first N local days (from the 1st; "
        "later days catch up a replica that was down)",
    )
