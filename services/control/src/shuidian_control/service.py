"""Control's parts wired together (ledger, policy store, automation, scheduler) and its housekeeping loop."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.automation import Automation
from shuidian_control.calendars import CalendarBook, Coverage
from shuidian_control.commands import Clock, CommandLedger, utcnow
from shuidian_control.policies import PolicyStore
from shuidian_control.schedules import Scheduler
from shuidian_control.settings import ControlSettings
from shuidian_control.windows import HolidayCalendar, StatutoryCalendar
from shuidian_kit.outbox import Outbox

log = logging.getLogger(__name__)


class Control:
    """Everything control does; the app subscribes its handlers and runs `housekeeping`."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        settings: ControlSettings,
        source: str,
        *,
        clock: Clock = utcnow,
        calendar: HolidayCalendar | None = None,
    ) -> None:
        self.settings = settings
        # The base calendar (the library; tests pass a fixed one) under the operator's published years.
        self.calendar = CalendarBook(engine, calendar or StatutoryCalendar())
        self.ledger = CommandLedger(engine, outbox, settings, source, clock)
        self.store = PolicyStore(engine, settings)
        self.automation = Automation(engine, self.ledger, self.store, settings, self.calendar)
        self.scheduler = Scheduler(
            engine, self.automation, self.store, timedelta(seconds=settings.schedule_grace_seconds), clock
        )
        self.engine = engine

    def check_calendar(self) -> Coverage:
        """Calendar coverage as of today (local): gauges, and a warning logged when this year, or from 1 December
        the next, is not covered."""
        return self.calendar.coverage(self.ledger.clock().astimezone(self.store.tz).date())

    async def tick(self) -> None:
        """One round of time-driven work: expiry and retries, due deferrals, schedules."""
        await self.ledger.tick()
        await self.automation.run_due_deferrals()
        await self.scheduler.run_due()

    async def housekeeping(self) -> None:
        await self.calendar.load()
        self.check_calendar()
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                await self.tick()
                if time.monotonic() - last_sweep >= self.settings.reconcile_sweep_seconds:
                    last_sweep = time.monotonic()
                    await self.automation.reconcile_sweep()
                    await self.calendar.load()  # another replica may have published a year
                    self.check_calendar()
            except Exception:
                # The task boundary: log and carry on; the next tick retries whatever failed.
                log.exception("control housekeeping round failed")
