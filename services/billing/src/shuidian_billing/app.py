"""Composition root of the billing service."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shuidian_billing.api import router
from shuidian_billing.billing import Billing
from shuidian_billing.lifecycle_api import router as lifecycle_router
from shuidian_billing.payments.api import router as payments_router
from shuidian_billing.payments.settlement import LeaseSettlements
from shuidian_billing.periodic import PeriodRuns
from shuidian_billing.premises import ImportRefused, Premises
from shuidian_billing.settings import BillingSettings
from shuidian_billing.usage_api import router as usage_router
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, problem
from shuidian_kit.service_auth import require_service_tokens

SERVICE = "billing"


def create_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_billing") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="billing", migrations=migrations) as runtime:
            billing = Billing(runtime.engine, runtime.outbox, settings, runtime.mqtt.client_id)
            billing.subscribe(runtime.mqtt)  # all reading batches, or this replica's shard of gateways
            for lane in range(billing.lanes):
                runtime.supervisor.add(f"bill-{lane}", functools.partial(billing.bill_loop, lane))
            runtime.supervisor.add("flush", billing.flush_loop)
            runtime.supervisor.add("reannounce", billing.reannounce_loop)
            premises = Premises(runtime.engine, billing, runtime.outbox, runtime.mqtt.client_id)
            runtime.supervisor.add("occupancy", premises.occupancy_loop)
            app.state.runtime = runtime
            app.state.billing = billing
            app.state.premises = premises
            app.state.periods = PeriodRuns(runtime.engine, billing)
            app.state.settlements = LeaseSettlements(runtime.engine, billing, premises, runtime.outbox)
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian billing",
        summary="计费、预付费账本与缴费 · Tariffs, the prepaid ledger and payments",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)

    async def on_import_refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ImportRefused)
        return problem(exc.status_code, "import refused", exc.detail, exc.code, errors=exc.errors)

    app.add_exception_handler(ImportRefused, on_import_refused)
    app.include_router(ops_router())
    app.include_router(router)
    app.include_router(payments_router)
    app.include_router(usage_router)
    app.include_router(lifecycle_router)
    return app
