"""Insights' HTTP API under `/v1`: reading history (JSON and CSV), tenant reports, what-if, line loss,
habits and trends. `InsightsError` is a `ShuidianError`: the kit maps it to problem+json with everything else."""

from __future__ import annotations

from shuidian_insights.api.routes import router

__all__ = ["router"]
