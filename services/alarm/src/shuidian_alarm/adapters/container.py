"""The typed container of everything the alarm service is made of: `app.compose` fills it at start, the routers
read it (`api.deps`), the tests and the benchmark drive it directly."""

from __future__ import annotations

from dataclasses import dataclass

from shuidian_alarm.adapters.alarms import AlarmService
from shuidian_alarm.adapters.evaluator import Evaluator
from shuidian_alarm.adapters.notify.notifier import Notifier
from shuidian_alarm.adapters.rulebook import RuleBook
from shuidian_alarm.adapters.work_orders import WorkOrders
from shuidian_kit.service import Runtime


@dataclass(frozen=True)
class Components:
    """Everything the alarm service is made of, wired together."""

    alarms: AlarmService
    rulebook: RuleBook
    evaluator: Evaluator
    notifier: Notifier
    work_orders: WorkOrders
    runtime: Runtime | None = None  # the app's engine, broker link and loops (None where a test composes the parts)
