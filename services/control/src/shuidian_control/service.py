"""Control's parts wired together (ledger, policy store, automation, scheduler) and its housekeeping loop."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.automation import Automation
from shuidian_control.commands import Clock, CommandLedger, utcnow
from shuidian_control.policies import CALENDAR_LAST_YEAR, PolicyStore, calendar_coverage
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
        self.calendar = calendar or StatutoryCalendar()
        self.ledger = CommandLedger(engine, outbox, settings, source, clock)
        self.store = PolicyStore(engine, settings)
        self.automation = Automation(engine, self.ledger, self.store, settings, self.calendar)
        self.scheduler = Scheduler(
            engine, self.automation, self.store, timedelta(seconds=settings.schedule_grace_seconds), clock
        )
        self.engine = engine

    def check_calendar(self) -> int | None:
        """Warn (and export a gauge) when the holiday calendar does not cover this year and the next."""
        today = self.ledger.clock().astimezone(self.store.tz).date()
        last = calendar_coverage(self.calendar, today)
        CALENDAR_LAST_YEAR.set(last or today.year - 1)
        if last is None or last <= today.year:
            log.warning(
                "the statutory-holiday calendar ends with %s: later dates count as holidays (no automatic cut-off) "
                "while holidays are protected; update chinese-calendar",
                last or today.year - 1,
            )
        return last

    async def tick(self) -> None:
        """One round of time-driven work: expiry and retries, due deferrals, schedules."""
        await self.ledger.tick()
        await self.automation.run_due_deferrals()
        await self.scheduler.run_due()

    async def housekeeping(self) -> None:
        self.check_calendar()
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                await self.tick()
                if time.monotonic() - last_sweep >= self.settings.reconcile_sweep_seconds:
                    last_sweep = time.monotonic()
                    await self.automation.reconcile_sweep()
            except Exception:
                # The task boundary: log and carry on; the next tick retries whatever failed.
                log.exception("control housekeeping round failed")
