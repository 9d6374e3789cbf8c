"""Alarm's HTTP API: alarms and their history, faults and work orders, rules, targets, subscriptions, tenants'
notification settings and the notification delivery log, under `/v1`. Errors are problem+json: the package's
`AlarmError` is mapped here (`install_error_handler`), everything else by the kit."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from shuidian_alarm.api import alarms, notifications, rules, targets, work_orders
from shuidian_alarm.api.schemas import PROBLEMS
from shuidian_alarm.errors import AlarmError
from shuidian_kit.service import problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)
for _part in (alarms, targets, rules, notifications, work_orders):
    router.include_router(_part.router)


def install_error_handler(app: FastAPI) -> None:
    """Answer every `AlarmError` with its status and code as problem details."""

    async def on_alarm_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AlarmError)
        return problem(exc.status_code, exc.code.replace("_", " "), exc.detail, exc.code)

    app.add_exception_handler(AlarmError, on_alarm_error)
