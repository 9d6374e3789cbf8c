"""Composition root of the insights service: builds every piece at start (`compose`), subscribes the
archive to the readings (its own shared-subscription group) and the households to room occupancy, runs the
nightly job, and serves the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.resources import files
from zoneinfo import ZoneInfo

import httpx
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_insights.adapters.analysis import Analysis
from shuidian_insights.adapters.archive import Archive
from shuidian_insights.adapters.container import Components
from shuidian_insights.adapters.households import Households
from shuidian_insights.adapters.jobs import Jobs
from shuidian_insights.adapters.pushes import MonthlyPush
from shuidian_insights.adapters.tariffs import Tariffs
from shuidian_insights.api import router
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.outbox import Outbox
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, started
from shuidian_kit.service_auth import ServiceTokens, require_service_tokens
from shuidian_shared import topics
from shuidian_shared.messages import ReadingBatch, RoomOccupancy

SERVICE = "insights"


def compose(
    settings: InsightsSettings,
    engine: AsyncEngine,
    outbox: Outbox,
    source: str,
    billing: httpx.AsyncClient | None,
    *,
    runtime: Runtime | None = None,
) -> Components:
    """The composition root proper: the app's lifespan, the tests and the benchmark build the service here (the
    lifespan passes its `runtime`, which the operations routes read)."""
    tz = ZoneInfo(settings.timezone)
    archive = Archive(
        engine,
        retention_months=settings.raw_retention_months,
        tz=tz,
        derived_retention={
            "frozen": settings.frozen_retention_months,
            "daily_profiles": settings.profile_retention_months,
            "monthly_profiles": settings.monthly_profile_retention_months,
        },
    )
    households = Households(engine, billing)
    tariffs = Tariffs(billing, ttl_seconds=settings.tariff_cache_seconds)
    analysis = Analysis(engine, archive, households, tariffs, outbox, source, tz)
    jobs = Jobs(
        engine,
        archive,
        households,
        analysis,
        MonthlyPush(engine, outbox, source),
        tz=tz,
        backfill_days=settings.backfill_days,
        interval_seconds=settings.job_interval_seconds,
        push_window_days=settings.monthly_push_days,
    )
    return Components(archive, households, tariffs, analysis, jobs, tz, runtime)


def _runtime(request: Request) -> Runtime:
    components: Components = request.app.state.components
    return started(components.runtime)


def create_app(settings: InsightsSettings | None = None) -> FastAPI:
    settings = settings or InsightsSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_insights") / "migrations")
        tokens = ServiceTokens.from_settings(settings, SERVICE)
        async with (
            Runtime.open(settings, service=SERVICE, schema="insights", migrations=migrations) as runtime,
            httpx.AsyncClient(
                base_url=settings.billing_url, timeout=10.0, auth=tokens.auth("billing", f"service:{SERVICE}")
            ) as billing,
        ):
            c = compose(settings, runtime.engine, runtime.outbox, runtime.mqtt.client_id, billing, runtime=runtime)
            await c.archive.maintain(datetime.now(UTC))
            subscribe = runtime.mqtt.subscribe
            subscribe(topics.shared(SERVICE, topics.ALL_READINGS), ReadingBatch, c.archive.record)
            # Not shared: occupancy is retained, and a broker sends retained messages to plain subscriptions only.
            subscribe(topics.ALL_ROOM_OCCUPANCY, RoomOccupancy, c.households.on_occupancy)
            runtime.supervisor.add("nightly", c.jobs.loop)
            app.state.components = c  # the app's one state: the routers and the kit's operations routes read it
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian insights",
        summary="抄表记录、节能建议、用电习惯、电价测算与线损 · Reading history, advice, habits, what-if and line loss",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)  # InsightsError is a ShuidianError: the kit answers it
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)
    app.include_router(ops_router(_runtime))
    app.include_router(router)
    return app
