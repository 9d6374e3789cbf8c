"""Composition root of the billing service: builds every piece at start into one `Container`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

import httpx
from fastapi import FastAPI

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.occupancy import RoomOccupancies
from shuidian_billing.adapters.payments.bank import BankImports
from shuidian_billing.adapters.payments.cash import CashDesk
from shuidian_billing.adapters.payments.online import OnlinePayments, Providers
from shuidian_billing.adapters.payments.refunds import Refunds
from shuidian_billing.adapters.payments.reviews import ReviewQueue
from shuidian_billing.adapters.payments.settlement import LeaseSettlements
from shuidian_billing.adapters.periodic import PeriodRuns
from shuidian_billing.adapters.premises import Premises
from shuidian_billing.api import deps
from shuidian_billing.api.core import router
from shuidian_billing.api.deps import Channels, Container
from shuidian_billing.api.lifecycle import router as lifecycle_router
from shuidian_billing.api.payments import router as payments_router
from shuidian_billing.api.usage import router as usage_router
from shuidian_billing.settings import BillingSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_kit.service_auth import require_service_tokens

SERVICE = "billing"


def build(runtime: Runtime, settings: BillingSettings, http: httpx.AsyncClient) -> Container:
    """Every piece of the service over the runtime's engine, outbox and MQTT link (and one HTTP client for
    the payment providers), wired once."""
    engine, outbox = runtime.engine, runtime.outbox
    billing = Billing.build(engine, outbox, settings, runtime.mqtt.client_id)
    occupancy = RoomOccupancies(engine, outbox, runtime.mqtt.client_id)
    premises = Premises(engine, billing.accounts, occupancy, outbox, runtime.mqtt.client_id)
    online = OnlinePayments(engine, billing, Providers.from_settings(settings), settings, http)
    channels = Channels(
        online=online,
        cash=CashDesk(engine, billing),
        bank=BankImports(engine, billing),
        reviews=ReviewQueue(engine, billing),
        refunds=Refunds(engine, billing, outbox, online),
    )
    return Container(
        runtime=runtime,
        billing=billing,
        premises=premises,
        occupancy=occupancy,
        periods=PeriodRuns(engine, billing),
        settlements=LeaseSettlements(engine, billing, premises, outbox),
        channels=channels,
    )


def start(container: Container) -> None:
    """Subscribe to reading batches (all, or this replica's shard) and hand the loops to the supervisor."""
    runtime, billing = container.runtime, container.billing
    billing.readings.subscribe(runtime.mqtt)
    for lane in range(billing.readings.lanes):
        runtime.supervisor.add(f"bill-{lane}", functools.partial(billing.readings.bill_loop, lane))
    runtime.supervisor.add("flush", billing.poster.flush_loop)
    runtime.supervisor.add("reannounce", billing.levels.reannounce_loop)
    runtime.supervisor.add("occupancy", container.occupancy.loop)
    runtime.supervisor.add("payment-orders", container.channels.online.sweep_loop)


def create_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_billing") / "migrations")
        async with (
            Runtime.open(settings, service=SERVICE, schema="billing", migrations=migrations) as runtime,
            httpx.AsyncClient(timeout=settings.provider_timeout_seconds) as http,
        ):
            container = build(runtime, settings, http)
            start(container)
            app.state.container = container  # the app's one state: the routers and the kit's ops routes read it
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian billing",
        summary="计费、预付费账本与缴费 · Tariffs, the prepaid ledger and payments",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)  # BillingError is a ShuidianError: the kit answers it (headers, an import's errors)
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)
    app.include_router(ops_router(lambda request: deps.container(request).runtime))
    app.include_router(router)
    app.include_router(payments_router)
    app.include_router(usage_router)
    app.include_router(lifecycle_router)
    return app
