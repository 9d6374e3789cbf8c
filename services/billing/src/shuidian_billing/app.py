"""Composition root of the billing service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI

from shuidian_billing.api import router
from shuidian_billing.billing import Billing
from shuidian_billing.settings import BillingSettings
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_shared import topics
from shuidian_shared.messages import ReadingBatch

SERVICE = "billing"


def create_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_billing") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="billing", migrations=migrations) as runtime:
            billing = Billing(runtime.engine, runtime.outbox, settings, runtime.mqtt.client_id)
            runtime.mqtt.subscribe(topics.shared(SERVICE, topics.ALL_READINGS), ReadingBatch, billing.on_readings)
            runtime.supervisor.add("flush", billing.flush_loop)
            app.state.runtime = runtime
            app.state.billing = billing
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian billing",
        summary="计费、预付费账本与缴费 · Tariffs, the prepaid ledger and payments",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    return app
