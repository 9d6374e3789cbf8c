"""The pieces a route may ask for, each taken from the typed container the composition root built at start."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shuidian_alarm.adapters.alarms import AlarmService
from shuidian_alarm.adapters.container import Components
from shuidian_alarm.adapters.evaluator import Evaluator
from shuidian_alarm.adapters.notify.notifier import Notifier
from shuidian_alarm.adapters.rulebook import RuleBook
from shuidian_alarm.adapters.work_orders import WorkOrders


def components(request: Request) -> Components:
    """The container `app.create_app` put on the application at start."""
    built: Components = request.app.state.components
    return built


Parts = Annotated[Components, Depends(components)]


def _alarms(parts: Parts) -> AlarmService:
    return parts.alarms


def _rulebook(parts: Parts) -> RuleBook:
    return parts.rulebook


def _evaluator(parts: Parts) -> Evaluator:
    return parts.evaluator


def _notifier(parts: Parts) -> Notifier:
    return parts.notifier


def _work_orders(parts: Parts) -> WorkOrders:
    return parts.work_orders


Alarms = Annotated[AlarmService, Depends(_alarms)]
Book = Annotated[RuleBook, Depends(_rulebook)]
Engine = Annotated[Evaluator, Depends(_evaluator)]
Notify = Annotated[Notifier, Depends(_notifier)]
Orders = Annotated[WorkOrders, Depends(_work_orders)]
