"""Policy changes made by staff, each with its consequences in the same transaction.

A change to windows, holds, buildings or the calendar makes every deferred trip re-evaluate on the next tick;
a 保电 change acts at once on the meters it covers (supply back on, or a trip under the usual windows), and a
building moving estates brings its meters' own keep-power modes in line.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.adapters.automation import Automation
from shuidian_control.adapters.calendars import CalendarBook
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.domain.policies import EstateSettings, KeepPowerReason


class PolicyAdmin:
    """Writes policy (through the store) and lets automation act on it, one transaction per change."""

    def __init__(self, engine: AsyncEngine, store: PolicyStore, automation: Automation, calendar: CalendarBook) -> None:
        self._engine = engine
        self._store = store
        self._automation = automation
        self._calendar = calendar

    async def put_estate_policy(self, estate_id: str, value: EstateSettings, actor: str) -> None:
        async with self._engine.begin() as conn:
            await self._store.put_estate_policy(conn, estate_id, value, actor)
            await self._automation.policy_changed(conn)

    async def put_building(self, building_id: str, estate_id: str | None, meters: list[str], actor: str) -> None:
        async with self._engine.begin() as conn:
            await self._store.put_building(conn, building_id, estate_id, meters, actor)
            await self._automation.policy_changed(conn)
            # The estate's 保电 may differ: the meters' own keep-power modes follow it.
            await self._automation.sync_keep_power_modes(conn, meters, actor)
        self._automation.notify()

    async def set_keep_power(self, scope: str, subject: str, reason: KeepPowerReason, note: str, actor: str) -> None:
        async with self._engine.begin() as conn:
            await self._store.set_keep_power(conn, scope, subject, reason, note, actor)
            meters = await self._store.subject_meters(conn, scope, subject)
            await self._automation.keep_power_changed(conn, meters, actor)
        self._automation.notify()

    async def clear_keep_power(self, scope: str, subject: str, why: str, actor: str) -> bool:
        """Lift a 保电 flag; False (nothing changed) when there was none."""
        async with self._engine.begin() as conn:
            if not await self._store.clear_keep_power(conn, scope, subject, why, actor):
                return False
            meters = await self._store.subject_meters(conn, scope, subject)
            await self._automation.keep_power_changed(conn, meters, actor)
        self._automation.notify()
        return True

    async def set_hold(self, estate_id: str, reason: str, until: datetime | None, actor: str) -> None:
        async with self._engine.begin() as conn:
            await self._store.set_hold(conn, estate_id, reason, until, actor)
            await self._automation.policy_changed(conn)

    async def clear_hold(self, estate_id: str, why: str, actor: str) -> bool:
        """Lift a no-cut-off switch; False (nothing changed) when there was none."""
        async with self._engine.begin() as conn:
            if not await self._store.clear_hold(conn, estate_id, why, actor):
                return False
            await self._automation.policy_changed(conn)
        return True

    async def publish_calendar(
        self, year: int, holidays: list[date], adjusted_workdays: list[date], notice: str, actor: str
    ) -> None:
        """Publish a year's arrangement; raises ValueError for an inconsistent one (nothing is written)."""
        async with self._engine.begin() as conn:
            await self._calendar.publish(conn, year, holidays, adjusted_workdays, notice, actor)
            await self._automation.policy_changed(conn)  # deferred trips re-evaluate against the new dates
        await self._calendar.load()
