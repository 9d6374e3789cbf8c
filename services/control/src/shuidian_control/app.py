"""Composition root of the control service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI

from shuidian_control.api import router
from shuidian_control.commands import CommandService
from shuidian_control.settings import ControlSettings
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, CommandResult

SERVICE = "control"


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_control") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="control", migrations=migrations) as runtime:
            commands = CommandService(runtime.engine, runtime.outbox, settings, runtime.mqtt.client_id)
            runtime.mqtt.subscribe(topics.shared(SERVICE, topics.ALL_BALANCES), BalanceEvent, commands.on_balance)
            runtime.mqtt.subscribe(
                topics.shared(SERVICE, topics.ALL_COMMAND_RESULTS), CommandResult, commands.on_result
            )
            runtime.supervisor.add("expiry", commands.expire_loop)
            app.state.runtime = runtime
            app.state.commands = commands
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian control",
        summary="远程拉合闸、保电与阀控 · Remote trip/close, keep-power and valves, with the command lifecycle",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    return app
