"""Control's time-driven work: command expiry and retries, due deferrals, schedules, the reconcile sweep, and the
holiday calendar's reload and coverage warning. One loop, run by the app's supervisor."""

from __future__ import annotations

import asyncio
import logging
import time

from shuidian_control.adapters.automation import Automation
from shuidian_control.adapters.calendars import CalendarBook
from shuidian_control.adapters.commands import CommandLedger
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.adapters.schedules import Scheduler
from shuidian_control.domain.calendar import Coverage
from shuidian_control.settings import ControlSettings

log = logging.getLogger(__name__)


class Housekeeping:
    """Runs each tick's work and, less often, the reconcile sweep and the calendar reload."""

    def __init__(
        self,
        settings: ControlSettings,
        ledger: CommandLedger,
        automation: Automation,
        scheduler: Scheduler,
        store: PolicyStore,
        calendar: CalendarBook,
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._automation = automation
        self._scheduler = scheduler
        self._store = store
        self._calendar = calendar

    def check_calendar(self) -> Coverage:
        """Calendar coverage as of today (local): gauges, and a warning logged when this year, or from 1 December
        the next, is not covered."""
        return self._calendar.coverage(self._ledger.clock().astimezone(self._store.tz).date())

    async def tick(self) -> None:
        """One round of time-driven work: expiry and retries, due deferrals, schedules."""
        await self._ledger.tick()
        await self._automation.run_due_deferrals()
        await self._scheduler.run_due()

    async def run(self) -> None:
        """The loop: a tick every `tick_seconds`, the sweep and calendar reload every `reconcile_sweep_seconds`."""
        await self._calendar.load()
        self.check_calendar()
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self._settings.tick_seconds)
            try:
                await self.tick()
                if time.monotonic() - last_sweep >= self._settings.reconcile_sweep_seconds:
                    last_sweep = time.monotonic()
                    await self._automation.reconcile_sweep()
                    await self._calendar.load()  # another replica may have published a year
                    self.check_calendar()
            except Exception:
                # The task boundary: log and carry on; the next tick retries whatever failed.
                log.exception("control housekeeping round failed")
