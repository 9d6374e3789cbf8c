"""The holiday calendar as the rules read it: how a local date is classified (holiday, 调休 working day, regular,
unknown), one year's official arrangement as published by the operator, years layered over a base, coverage.

A date the calendar does not cover (a year the data does not know yet) is UNKNOWN, never guessed; the windows treat
it as a holiday. The library's data (chinese-calendar) is read by `adapters.calendars.StatutoryCalendar`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Protocol

SATURDAY = 5


class DayStatus(StrEnum):
    """How the State Council's holiday arrangement classifies a local date."""

    REGULAR = "regular"  # an ordinary weekday or weekend day
    HOLIDAY = "holiday"  # a statutory rest day, in-lieu days of a holiday period included
    ADJUSTED_WORKDAY = "adjusted_workday"  # 调休: a weekend day worked to bridge a holiday
    UNKNOWN = "unknown"  # the calendar has no data for the date's year


class HolidayCalendar(Protocol):
    """Classifies local dates; answers UNKNOWN rather than guessing for dates it does not cover."""

    def status(self, day: date) -> DayStatus: ...


@dataclass(frozen=True)
class FixedCalendar:
    """A calendar from explicit dates, for tests and local arrangements; `years` bounds what it covers."""

    holidays: frozenset[date] = frozenset()
    adjusted_workdays: frozenset[date] = frozenset()
    years: frozenset[int] | None = None

    def status(self, day: date) -> DayStatus:
        """Classify one local date."""
        if self.years is not None and day.year not in self.years:
            return DayStatus.UNKNOWN
        if day in self.holidays:
            return DayStatus.HOLIDAY
        if day in self.adjusted_workdays:
            return DayStatus.ADJUSTED_WORKDAY
        return DayStatus.REGULAR


def published_year(year: int, holidays: Iterable[date], adjusted_workdays: Iterable[date]) -> FixedCalendar:
    """One year's official arrangement (the State Council notice) as a calendar covering exactly that year.

    Raises ValueError when a date lies outside the year, a date is both a holiday and a working day, or an adjusted
    working day (调休) is not a Saturday or Sunday (it is a weekend day worked; a weekday needs no adjustment).
    """
    rest, work = frozenset(holidays), frozenset(adjusted_workdays)
    problems: list[str] = []
    outside = sorted(d for d in rest | work if d.year != year)
    if outside:
        problems.append(f"dates outside {year}: {', '.join(d.isoformat() for d in outside)}")
    both = sorted(rest & work)
    if both:
        problems.append(f"both holiday and working day: {', '.join(d.isoformat() for d in both)}")
    weekdays = sorted(d for d in work if d.weekday() < SATURDAY)
    if weekdays:
        problems.append(
            f"adjusted working days must be a Saturday or Sunday: {', '.join(d.isoformat() for d in weekdays)}"
        )
    if problems:
        raise ValueError("; ".join(problems))
    return FixedCalendar(rest, work, frozenset({year}))


@dataclass(frozen=True)
class LayeredCalendar:
    """Operator-published years over a base calendar (the library): a published year is classified by the
    operator's data alone; other years by the base; UNKNOWN only when neither covers the date."""

    published: Mapping[int, HolidayCalendar]
    base: HolidayCalendar

    def status(self, day: date) -> DayStatus:
        """Classify one local date."""
        year = self.published.get(day.year)
        return (year or self.base).status(day)


def calendar_coverage(calendar: HolidayCalendar, today: date) -> int | None:
    """The last year (from this one on) the calendar knows, or None if it does not even know this year."""
    year = today.year
    if not _covers(calendar, year):
        return None
    while _covers(calendar, year + 1) and year < today.year + 50:
        year += 1
    return year


def calendar_warning(calendar: HolidayCalendar, today: date) -> str | None:
    """What the operator must do about the calendar, or None: this year uncovered (always), next year uncovered
    (from 1 December, when the State Council's notice is usually out)."""
    if not _covers(calendar, today.year):
        return (
            f"节假日日历缺少 {today.year} 年安排，自动停电全部暂缓 · the holiday calendar does not cover {today.year}: "
            f"every date counts as a holiday (no automatic cut-off); publish PUT /v1/calendar/{today.year}"
        )
    if today.month == 12 and not _covers(calendar, today.year + 1):
        nxt = today.year + 1
        return (
            f"节假日日历缺少 {nxt} 年安排 · the holiday calendar does not cover {nxt}: from {nxt}-01-01 every date "
            f"counts as a holiday (no automatic cut-off); publish PUT /v1/calendar/{nxt} from the State Council notice"
        )
    return None


def _covers(calendar: HolidayCalendar, year: int) -> bool:
    return all(calendar.status(day) is not DayStatus.UNKNOWN for day in (date(year, 1, 1), date(year, 12, 31)))


@dataclass(frozen=True)
class Coverage:
    """What the calendar covers on a given day, and what the operator must do about it."""

    today: date
    last_year: int | None
    published_years: tuple[int, ...]
    next_year_covered: bool
    warning: str | None


def coverage_report(calendar: LayeredCalendar, today: date) -> Coverage:
    """What a layered calendar covers as of `today` (local), with the warning for the operator."""
    last = calendar_coverage(calendar, today)
    return Coverage(
        today=today,
        last_year=last,
        published_years=tuple(sorted(calendar.published)),
        next_year_covered=last is not None and last > today.year,
        warning=calendar_warning(calendar, today),
    )
