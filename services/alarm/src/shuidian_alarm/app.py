"""Composition root of the alarm service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI

from shuidian_alarm.alarms import AlarmService
from shuidian_alarm.api import router
from shuidian_alarm.settings import AlarmSettings
from shuidian_kit.service import Runtime, install_error_handlers, ops_router
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, CommandResult

SERVICE = "alarm"


def create_app(settings: AlarmSettings | None = None) -> FastAPI:
    settings = settings or AlarmSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_alarm") / "migrations")
        async with Runtime.open(settings, service=SERVICE, schema="alarm", migrations=migrations) as runtime:
            alarms = AlarmService(runtime.engine, runtime.outbox, runtime.mqtt.client_id)
            runtime.mqtt.subscribe(topics.shared(SERVICE, topics.ALL_BALANCES), BalanceEvent, alarms.on_balance)
            runtime.mqtt.subscribe(
                topics.shared(SERVICE, topics.ALL_COMMAND_RESULTS), CommandResult, alarms.on_command_result
            )
            app.state.runtime = runtime
            app.state.alarms = alarms
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian alarm",
        summary="告警规则、告警生命周期与通知 · Alarm rules, lifecycle and notifications",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    return app
