"""The holiday calendar control decides with: years the operator published from the State Council's notice
(control.holiday_calendars, PUT /v1/calendar/{year}) layered over the chinese-calendar library's data.

The decision core stays pure: it gets a `HolidayCalendar`. `CalendarBook` is that calendar for the service: it holds
an immutable `LayeredCalendar` and swaps it for a new one when the published years change (a PUT on this replica, or
a reload that picks up another replica's). `StatutoryCalendar` reads the library's data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

import chinese_calendar  # type: ignore[import-untyped]
from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.domain.calendar import (
    Coverage,
    DayStatus,
    HolidayCalendar,
    LayeredCalendar,
    coverage_report,
    published_year,
)

log = logging.getLogger(__name__)

CALENDAR_LAST_YEAR = Gauge(
    "control_holiday_calendar_last_year",
    "last year the holiday calendar (published years over the library) covers; later dates are protected",
)
CALENDAR_WARNING = Gauge(
    "control_holiday_calendar_warning",
    "1 while this year, or from 1 December next year, is not covered by the holiday calendar",
)
CALENDAR_PUBLISHED_YEARS = Gauge("control_holiday_calendar_published_years", "years published by the operator")


@dataclass(frozen=True)
class PublishedYear:
    """One year's official arrangement as the operator published it."""

    year: int
    holidays: tuple[date, ...]
    adjusted_workdays: tuple[date, ...]
    notice: str
    published_by: str
    published_at: datetime


class StatutoryCalendar:
    """The maintained chinese-calendar data; a year it does not know yet is UNKNOWN."""

    def status(self, day: date) -> DayStatus:
        """Classify one local date."""
        try:
            on_holiday, name = chinese_calendar.get_holiday_detail(day)
        except NotImplementedError:
            return DayStatus.UNKNOWN
        if name is None:
            return DayStatus.REGULAR
        return DayStatus.HOLIDAY if on_holiday else DayStatus.ADJUSTED_WORKDAY


class CalendarBook:
    """A `HolidayCalendar` over the library (or the calendar given) and the operator's published years."""

    def __init__(self, engine: AsyncEngine, base: HolidayCalendar) -> None:
        self._engine = engine
        self.base = base
        self.current = LayeredCalendar({}, base)
        self._warned: str | None = None

    def status(self, day: date) -> DayStatus:
        """Classify one local date (operator data for published years, else the base)."""
        return self.current.status(day)

    async def load(self) -> None:
        """Re-read the published years (cheap: one row per year)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(text("SELECT year, holidays, adjusted_workdays FROM control.holiday_calendars"))
            published = {r.year: published_year(r.year, r.holidays, r.adjusted_workdays) for r in rows}
        self.current = LayeredCalendar(published, self.base)
        CALENDAR_PUBLISHED_YEARS.set(len(published))

    async def publish(
        self,
        conn: AsyncConnection,
        year: int,
        holidays: list[date],
        adjusted_workdays: list[date],
        notice: str,
        actor: str,
    ) -> None:
        """Store a year's arrangement (replacing an earlier one), audited in the policy log. Raises ValueError for an
        inconsistent arrangement. Call `load` after the commit."""
        arrangement = published_year(year, holidays, adjusted_workdays)  # validates
        previous = (
            await conn.execute(
                text("SELECT year FROM control.holiday_calendars WHERE year = :y FOR UPDATE"), {"y": year}
            )
        ).first()
        await conn.execute(
            text(
                "INSERT INTO control.holiday_calendars (year, holidays, adjusted_workdays, notice, published_by) "
                "VALUES (:y, :h, :w, :n, :who) ON CONFLICT (year) DO UPDATE SET holidays = EXCLUDED.holidays, "
                "adjusted_workdays = EXCLUDED.adjusted_workdays, notice = EXCLUDED.notice, "
                "published_by = EXCLUDED.published_by, published_at = now()"
            ),
            {
                "y": year,
                "h": sorted(arrangement.holidays),
                "w": sorted(arrangement.adjusted_workdays),
                "n": notice,
                "who": actor,
            },
        )
        detail = (
            f"{len(arrangement.holidays)} holiday(s), {len(arrangement.adjusted_workdays)} adjusted working day(s); "
            f"{notice}"
        )
        await PolicyStore.log(
            conn, f"calendar:{year}", "calendar_replaced" if previous else "calendar_published", detail, actor
        )

    async def year(self, year: int) -> PublishedYear | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.holiday_calendars WHERE year = :y"), {"y": year})
            ).first()
        if row is None:
            return None
        return PublishedYear(
            row.year,
            tuple(sorted(row.holidays)),
            tuple(sorted(row.adjusted_workdays)),
            row.notice,
            row.published_by,
            row.published_at,
        )

    def coverage(self, today: date) -> Coverage:
        """What the calendar covers as of `today`; exports the gauges and logs a new warning once."""
        covered = coverage_report(self.current, today)
        CALENDAR_LAST_YEAR.set(covered.last_year or today.year - 1)
        CALENDAR_WARNING.set(1 if covered.warning else 0)
        if covered.warning and covered.warning != self._warned:
            log.warning("%s", covered.warning)
        self._warned = covered.warning
        return covered
