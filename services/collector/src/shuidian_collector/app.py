"""Composition root of the collector service: builds every piece at start into one `Container`, wires the MQTT
subscriptions and the routers, and runs the background loops under the kit's supervisor."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request

from shuidian_collector.adapters import retention
from shuidian_collector.adapters.command_executor import Commands, utcnow
from shuidian_collector.adapters.container import Container
from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.drivers import Driver
from shuidian_collector.adapters.drivers.cjt188 import Cjt188Driver
from shuidian_collector.adapters.drivers.dlt645 import Credentials, Dlt645Driver, Dlt645v1997Driver
from shuidian_collector.adapters.drivers.modbus import ModbusDriver
from shuidian_collector.adapters.fleet import Fleet
from shuidian_collector.adapters.registry import Registry
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.api.routes import router
from shuidian_collector.domain.commands import ConfirmPolicy
from shuidian_collector.domain.devices import BusProtocol
from shuidian_collector.domain.readings import ClockPolicy
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_kit.service_auth import require_service_tokens
from shuidian_shared import topics
from shuidian_shared.messages import CommandRequested, ReplayRequest

SERVICE = "collector"


def _dlt645_credentials(settings: CollectorSettings) -> Credentials | None:
    if settings.dlt645_password is None:
        return None
    password = int(settings.dlt645_password.get_secret_value())
    return Credentials(settings.dlt645_password_level, password, settings.dlt645_operator)


def drivers(settings: CollectorSettings) -> dict[str, Driver]:
    relay = ConfirmPolicy(settings.confirm_attempts, settings.confirm_interval_seconds)
    valve = ConfirmPolicy(settings.valve_confirm_attempts, settings.valve_confirm_interval_seconds)
    clock = ClockPolicy(
        settings.time_sync_tolerance_seconds,
        settings.time_sync_broadcast_limit_seconds,
        settings.clock_check_interval_seconds,
        settings.clock_drift_tolerance_seconds,
    )
    leakage = Decimal(str(settings.leakage_threshold_ma))
    return {
        BusProtocol.DLT645: Dlt645Driver(
            timezone=settings.timezone, confirm=relay, credentials=_dlt645_credentials(settings), clock=clock
        ),
        BusProtocol.DLT645_1997: Dlt645v1997Driver(),
        BusProtocol.CJT188: Cjt188Driver(confirm=valve, timezone=settings.timezone, clock=clock),
        BusProtocol.MODBUS_RTU: ModbusDriver(rtu=True, confirm=relay, leakage_threshold_ma=leakage),
        BusProtocol.MODBUS_TCP: ModbusDriver(rtu=False, confirm=relay, leakage_threshold_ma=leakage),
    }


@asynccontextmanager
async def _store(settings: CollectorSettings) -> AsyncIterator[LocalStore]:
    """The local store, in a temporary directory (removed afterwards) when the settings name none."""
    with contextlib.ExitStack() as scratch:
        path = settings.store_path()
        if path is None:
            path = (
                Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="shuidian-collector-"))) / "store.sqlite3"
            )
        async with LocalStore(
            path, max_rows=settings.store_max_rows, replay_seconds=settings.replay_window_seconds
        ) as store:
            yield store


def _runtime(request: Request) -> Runtime:
    container: Container = request.app.state.collector
    return container.runtime


def create_app(settings: CollectorSettings | None = None) -> FastAPI:
    settings = settings or CollectorSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_collector") / "migrations")
        async with (
            Runtime.open(settings, service=SERVICE, schema="collector", migrations=migrations) as runtime,
            _store(settings) as store,
        ):
            source = runtime.mqtt.client_id
            registry = Registry(runtime.engine)
            states = DeviceStates(runtime.engine, source)
            commands = Commands(runtime.engine, runtime.outbox, states, store, source, now=utcnow)
            fleet = Fleet(registry, settings, drivers(settings), store, states, commands, source)
            # Not shared: every instance hears every command and acts only on the gateways it owns.
            runtime.mqtt.subscribe(topics.ALL_METER_COMMANDS, CommandRequested, commands.on_command)

            async def replay(request: ReplayRequest, topic: str) -> None:
                # Not shared either: only the instance whose store has the stream's epoch holds its batches.
                await store.replay(request.gateway_id, request.epoch, request.from_sequence, request.to_sequence)

            runtime.mqtt.subscribe(topics.ALL_GATEWAY_REPLAYS, ReplayRequest, replay)
            runtime.supervisor.add("fleet", fleet.run)
            runtime.supervisor.add("store", lambda: store.forward(runtime.mqtt))
            # Edges older than the retention are pruned (one replica at a time), and reports refuse windows
            # starting before it rather than compute them from what is left.
            runtime.supervisor.add(
                "online-edges-retention", lambda: retention.run(runtime.engine, settings.online_edges_retention_days)
            )
            # The app's one state: the routers and the kit's operations routes (/readyz, dead letters) read it.
            app.state.collector = Container(settings, runtime, registry, store, states, commands, fleet)
            try:
                async with runtime.running():
                    yield
            finally:
                await commands.close()

    app = FastAPI(
        title="Shuidian collector",
        summary="通过网关采集表计并执行设备命令 · Reads meters through field gateways and executes device commands",
        version="0.2.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)  # CollectorError is a ShuidianError: the kit answers its RequestErrors
    serve_docs_offline(app)
    require_service_tokens(app, settings, SERVICE)
    app.include_router(ops_router(_runtime))
    app.include_router(router)
    return app
