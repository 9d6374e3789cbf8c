"""Composition root of the collector service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI

from shuidian_collector.api import router
from shuidian_collector.drivers import Driver
from shuidian_collector.drivers.dlt645 import Dlt645Driver
from shuidian_collector.fleet import Fleet
from shuidian_collector.poller import Commands, DeviceStates
from shuidian_collector.registry import BusProtocol, Registry
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_shared import topics
from shuidian_shared.messages import CommandRequested

SERVICE = "collector"


def create_app(settings: CollectorSettings | None = None) -> FastAPI:
    settings = settings or CollectorSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_collector") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="collector", migrations=migrations) as runtime:
            source = runtime.mqtt.client_id
            drivers: dict[str, Driver] = {
                BusProtocol.DLT645: Dlt645Driver(
                    timeout=1.0,
                    timezone=settings.timezone,
                    confirm_attempts=settings.confirm_attempts,
                    confirm_interval=settings.confirm_interval_seconds,
                )
            }
            registry = Registry(runtime.engine)
            states = DeviceStates(runtime.engine, runtime.outbox, source)
            commands = Commands(runtime.engine, runtime.outbox, states, source)
            fleet = Fleet(registry, settings, drivers, runtime.engine, runtime.outbox, states, commands, source)
            # Not shared: every instance hears every command and acts only on the meters it owns.
            runtime.mqtt.subscribe(topics.ALL_METER_COMMANDS, CommandRequested, commands.on_command)
            runtime.supervisor.add("fleet", fleet.run)
            app.state.runtime = runtime
            app.state.registry = registry
            app.state.fleet = fleet
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian collector",
        summary="通过网关采集表计并执行设备命令 · Reads meters through field gateways and executes device commands",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    return app
