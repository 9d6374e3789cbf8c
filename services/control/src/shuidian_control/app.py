"""Composition root of the control service: builds every part at start, wires subscriptions, routers and the loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib.resources import files

from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.adapters.automation import Automation
from shuidian_control.adapters.calendars import CalendarBook, StatutoryCalendar
from shuidian_control.adapters.commands import CommandLedger
from shuidian_control.adapters.housekeeping import Housekeeping
from shuidian_control.adapters.parts import ControlParts
from shuidian_control.adapters.policy_admin import PolicyAdmin
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.adapters.schedules import Scheduler
from shuidian_control.api import router
from shuidian_control.domain import Clock
from shuidian_control.domain.calendar import HolidayCalendar
from shuidian_control.settings import ControlSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.outbox import Outbox
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, started
from shuidian_kit.service_auth import require_service_tokens
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, CommandResult, DeviceState, GatewayStatus

SERVICE = "control"


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_control(
    engine: AsyncEngine,
    outbox: Outbox,
    settings: ControlSettings,
    source: str,
    *,
    clock: Clock = utcnow,
    calendar: HolidayCalendar | None = None,
    runtime: Runtime | None = None,
) -> ControlParts:
    """Every part of control, wired; `calendar` is the base under the operator's published years (the library's
    data unless a test passes a fixed one); `runtime` is the app's (a test that drives the parts has none)."""
    book = CalendarBook(engine, calendar or StatutoryCalendar())
    ledger = CommandLedger(engine, outbox, settings, source, clock)
    store = PolicyStore(engine, settings)
    automation = Automation(engine, ledger, store, settings, book)
    scheduler = Scheduler(engine, automation, store, timedelta(seconds=settings.schedule_grace_seconds), clock)
    return ControlParts(
        calendar=book,
        ledger=ledger,
        store=store,
        automation=automation,
        scheduler=scheduler,
        admin=PolicyAdmin(engine, store, automation, book),
        housekeeping=Housekeeping(settings, ledger, automation, scheduler, store, book),
        runtime=runtime,
    )


def _runtime(request: Request) -> Runtime:
    parts: ControlParts = request.app.state.control
    return started(parts.runtime)


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_control") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="control", migrations=migrations) as runtime:
            control = build_control(runtime.engine, runtime.outbox, settings, runtime.mqtt.client_id, runtime=runtime)
            await control.calendar.load()  # published years before the first decision
            mqtt = runtime.mqtt
            mqtt.subscribe(topics.shared(SERVICE, topics.ALL_BALANCES), BalanceEvent, control.automation.on_balance)
            mqtt.subscribe(topics.shared(SERVICE, topics.ALL_COMMAND_RESULTS), CommandResult, control.ledger.on_result)
            # Device and gateway states are retained. Shared subscriptions are not sent retained messages (MQTT 5),
            # so these are plain subscriptions: every replica gets the retained snapshot on each (re)connect and
            # every later edge. Handling them is idempotent (newest report wins, reconcile locks the shadow).
            mqtt.subscribe(topics.ALL_METER_STATES, DeviceState, control.automation.on_device_state)
            mqtt.subscribe(topics.ALL_GATEWAY_STATUS, GatewayStatus, control.automation.on_gateway_status)
            runtime.supervisor.add("housekeeping", control.housekeeping.run)
            app.state.control = control  # the app's one state: the routers and the kit's ops routes read it
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian control",
        summary="远程拉合闸、保电与阀控 · Remote trip/close, keep-power and valves, with the command lifecycle",
        version="0.2.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)  # ControlError is a ShuidianError: the kit answers it
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)
    app.include_router(ops_router(_runtime))
    app.include_router(router)
    return app
