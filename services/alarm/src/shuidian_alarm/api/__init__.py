"""Alarm's HTTP API: alarms and their history, faults and work orders, rules, targets, subscriptions, tenants'
notification settings and the notification delivery log, under `/v1`. Errors are problem+json: the package's
`AlarmError` is a `ShuidianError`, which the kit maps in one place with everything else."""

from __future__ import annotations

from fastapi import APIRouter

from shuidian_alarm.api import alarms, notifications, rules, targets, work_orders
from shuidian_alarm.api.schemas import PROBLEMS

router = APIRouter(prefix="/v1", responses=PROBLEMS)
for _part in (alarms, targets, rules, notifications, work_orders):
    router.include_router(_part.router)
