"""Composition root of the control service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI

from shuidian_control.api import router
from shuidian_control.service import Control
from shuidian_control.settings import ControlSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_kit.service_auth import require_service_tokens
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, CommandResult, DeviceState, GatewayStatus

SERVICE = "control"


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_control") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="control", migrations=migrations) as runtime:
            control = Control(runtime.engine, runtime.outbox, settings, runtime.mqtt.client_id)
            await control.calendar.load()  # published years before the first decision
            mqtt = runtime.mqtt
            mqtt.subscribe(topics.shared(SERVICE, topics.ALL_BALANCES), BalanceEvent, control.automation.on_balance)
            mqtt.subscribe(topics.shared(SERVICE, topics.ALL_COMMAND_RESULTS), CommandResult, control.ledger.on_result)
            # Device and gateway states are retained. Shared subscriptions are not sent retained messages (MQTT 5),
            # so these are plain subscriptions: every replica gets the retained snapshot on each (re)connect and
            # every later edge. Handling them is idempotent (newest report wins, reconcile locks the shadow).
            mqtt.subscribe(topics.ALL_METER_STATES, DeviceState, control.automation.on_device_state)
            mqtt.subscribe(topics.ALL_GATEWAY_STATUS, GatewayStatus, control.automation.on_gateway_status)
            runtime.supervisor.add("housekeeping", control.housekeeping)
            app.state.runtime = runtime
            app.state.control = control
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian control",
        summary="远程拉合闸、保电与阀控 · Remote trip/close, keep-power and valves, with the command lifecycle",
        version="0.2.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)
    app.include_router(ops_router())
    app.include_router(router)
    return app
