"""Insights' settings (env prefix INSIGHTS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class InsightsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INSIGHTS_", extra="ignore", frozen=True)

    http_port: int = 8005
    billing_url: str = Field(default="http://127.0.0.1:8002", description="where tariffs and rooms are read")
    raw_retention_months: int = Field(default=13, ge=2, description="months of raw samples kept; frozen values stay")
    job_interval_seconds: float = Field(default=600.0, gt=0, description="how often the nightly job looks for days")
    backfill_days: int = Field(default=62, ge=1, description="how far back the nightly job looks for days not done")
    tariff_cache_seconds: float = Field(default=300.0, ge=0)
