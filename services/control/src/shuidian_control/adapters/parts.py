"""The running service's parts in one typed container: `app.py` builds it at start, routers read it."""

from __future__ import annotations

from dataclasses import dataclass

from shuidian_control.adapters.automation import Automation
from shuidian_control.adapters.calendars import CalendarBook
from shuidian_control.adapters.commands import CommandLedger
from shuidian_control.adapters.housekeeping import Housekeeping
from shuidian_control.adapters.policy_admin import PolicyAdmin
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.adapters.schedules import Scheduler
from shuidian_kit.service import Runtime


@dataclass(frozen=True)
class ControlParts:
    """Everything control runs with; the app subscribes the handlers, serves the routers and runs `housekeeping`."""

    calendar: CalendarBook
    ledger: CommandLedger
    store: PolicyStore
    automation: Automation
    scheduler: Scheduler
    admin: PolicyAdmin
    housekeeping: Housekeeping
    runtime: Runtime | None = None  # the app's engine, broker link and loops (None in a test that drives the parts)
