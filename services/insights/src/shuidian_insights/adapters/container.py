"""The typed container the composition root builds and the routers read."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from shuidian_insights.adapters.analysis import Analysis
from shuidian_insights.adapters.archive import Archive
from shuidian_insights.adapters.households import Households
from shuidian_insights.adapters.jobs import Jobs
from shuidian_insights.adapters.tariffs import Tariffs
from shuidian_kit.service import Runtime


@dataclass(frozen=True)
class Components:
    archive: Archive
    households: Households
    tariffs: Tariffs
    analysis: Analysis
    jobs: Jobs
    tz: ZoneInfo
    runtime: Runtime | None = None  # the app's engine, broker link and loops (None where a test composes the parts)
