"""The holiday calendar control decides with: years the operator published from the State Council's notice
(control.holiday_calendars, PUT /v1/calendar/{year}) layered over the chinese-calendar library's data.

The decision core stays pure: it gets a `HolidayCalendar`. `CalendarBook` is that calendar for the service: it holds
an immutable `LayeredCalendar` and swaps it for a new one when the published years change (a PUT on this replica, or
a reload that picks up another replica's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control.policies import PolicyStore
from shuidian_control.windows import (
    DayStatus,
    HolidayCalendar,
    LayeredCalendar,
    calendar_coverage,
    calendar_warning,
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


@dataclass(frozen=True)
class Coverage:
    """What the calendar covers on a given day, and what the operator must do about it."""

    today: date
    last_year: int | None
    published_years: tuple[int, ...]
    next_year_covered: bool
    warning: str | None


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
        calendar = self.current
        last = calendar_coverage(calendar, today)
        warning = calendar_warning(calendar, today)
        CALENDAR_LAST_YEAR.set(last or today.year - 1)
        CALENDAR_WARNING.set(1 if warning else 0)
        if warning and warning != self._warned:
            log.warning("%s", warning)
        self._warned = warning
        return Coverage(
            today=today,
            last_year=last,
            published_years=tuple(sorted(calendar.published)),
            next_year_covered=last is not None and last > today.year,
            warning=warning,
        )
