"""Protected windows: when a cut-off must wait (nights, weekends, statutory holidays, operator holds, blackouts)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

import chinese_calendar  # type: ignore[import-untyped]

from shuidian_kit.errors import ServiceError

# Every window is half-open, [start, end): protected at 22:00:00, allowed at 07:00:00. Rules are evaluated in
# local time; instants go in and come out as aware UTC. A date the holiday calendar does not cover (a year the
# chinese-calendar data does not know yet) counts as a holiday while holidays are protected: not cutting power
# is the safe way to be wrong, and the Protection's detail says to update the package.

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_HORIZON = timedelta(days=60)
_SATURDAY = 5


class DayStatus(StrEnum):
    """How the State Council's holiday arrangement classifies a local date."""

    REGULAR = "regular"  # an ordinary weekday or weekend day
    HOLIDAY = "holiday"  # a statutory rest day, in-lieu days of a holiday period included
    ADJUSTED_WORKDAY = "adjusted_workday"  # 调休: a weekend day worked to bridge a holiday
    UNKNOWN = "unknown"  # the calendar has no data for the date's year


class HolidayCalendar(Protocol):
    """Classifies local dates; answers UNKNOWN rather than guessing for dates it does not cover."""

    def status(self, day: date) -> DayStatus: ...


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
    weekdays = sorted(d for d in work if d.weekday() < _SATURDAY)
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
class DailyWindow:
    """A local time-of-day window [start, end); it crosses midnight when end is earlier than start."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a daily window is in local wall-clock time: pass naive times")
        if self.start == self.end:
            raise ValueError("a daily window needs start != end (use None for no window)")

    @property
    def crosses_midnight(self) -> bool:
        """True for windows like 22:00–07:00."""
        return self.end < self.start

    def contains(self, moment: time) -> bool:
        """Whether a local wall-clock time falls inside the window."""
        if self.crosses_midnight:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end


@dataclass(frozen=True)
class OperatorHold:
    """The operator's "no cut-off" switch (e.g. extreme weather); open-ended while `until` is None."""

    reason: str
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.until is not None:
            _require_aware(self.until, "until")


@dataclass(frozen=True)
class Blackout:
    """An operator-defined period [start, end) without cut-offs (an exam week, a heatwave, an event)."""

    start: datetime
    end: datetime
    reason: str = ""

    def __post_init__(self) -> None:
        _require_aware(self.start, "start")
        _require_aware(self.end, "end")
        if self.end <= self.start:
            raise ValueError("a blackout must end after it starts")


NIGHTS = DailyWindow(time(22), time(7))


@dataclass(frozen=True)
class ProtectedWindows:
    """An estate's protected windows; the defaults protect nights, weekends and statutory holidays."""

    nights: DailyWindow | None = NIGHTS
    weekends: bool = True
    holidays: bool = True
    hold: OperatorHold | None = None
    blackouts: tuple[Blackout, ...] = ()


class ProtectionRule(StrEnum):
    """Which rule protects an instant, in the order they are reported."""

    OPERATOR_HOLD = "operator_hold"
    BLACKOUT = "blackout"
    HOLIDAY = "holiday"
    CALENDAR_UNKNOWN = "calendar_unknown"
    WEEKEND = "weekend"
    NIGHT = "night"


@dataclass(frozen=True)
class Protection:
    """Why an instant is protected, for the audit trail; `until` is when this rule stops (None: open-ended)."""

    rule: ProtectionRule
    detail: str
    until: datetime | None


class NoAllowedInstant(ServiceError):
    """No instant within the search horizon allows a trip; re-evaluate at `resume_at` (None: when the policy changes)."""

    code = "no_allowed_instant"
    status_code = 409

    def __init__(self, detail: str, *, resume_at: datetime | None) -> None:
        super().__init__(detail)
        self.resume_at = resume_at


def is_protected(
    now: datetime, windows: ProtectedWindows, calendar: HolidayCalendar, tz: tzinfo = SHANGHAI
) -> Protection | None:
    """The rule that forbids a trip at `now`, or None when a trip is allowed."""
    return next(_protections(now, windows, calendar, tz), None)


def next_allowed(
    now: datetime,
    windows: ProtectedWindows,
    calendar: HolidayCalendar,
    tz: tzinfo = SHANGHAI,
    *,
    horizon: timedelta = DEFAULT_HORIZON,
) -> datetime:
    """The first instant at or after `now` when a trip is allowed; raises NoAllowedInstant past `horizon`."""
    _require_aware(now, "now")
    start = candidate = now.astimezone(UTC)
    while True:
        covering = list(_protections(candidate, windows, calendar, tz))
        if not covering:
            return candidate
        if any(p.until is None for p in covering):
            hold = next(p for p in covering if p.until is None)
            raise NoAllowedInstant(f"open-ended protection: {hold.detail}", resume_at=None)
        # Every covering rule protects all of [candidate, its until), so jumping to the latest skips no allowed instant.
        reached = max(p.until for p in covering if p.until is not None)
        if reached <= candidate:
            # Only a wall-clock gap (DST) can map a window's end onto or before now; step on rather than loop.
            reached = candidate + timedelta(minutes=1)
        candidate = reached
        if candidate - start > horizon:
            raise NoAllowedInstant(
                f"no instant allows a trip within {horizon} of {start.isoformat()}", resume_at=candidate
            )


def _protections(
    now: datetime, windows: ProtectedWindows, calendar: HolidayCalendar, tz: tzinfo
) -> Iterator[Protection]:
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    hold = windows.hold
    if hold is not None and (hold.until is None or now < hold.until):
        yield Protection(ProtectionRule.OPERATOR_HOLD, f"operator no-cut-off switch: {hold.reason}", hold.until)
    for blackout in windows.blackouts:
        if blackout.start <= now < blackout.end:
            yield Protection(ProtectionRule.BLACKOUT, f"blackout period: {blackout.reason}", blackout.end)
    local = now.astimezone(tz)
    day = local.date()
    tomorrow = _local_instant(day + timedelta(days=1), time(0), tz)
    status = calendar.status(day) if windows.holidays or windows.weekends else DayStatus.REGULAR
    if windows.holidays and status is DayStatus.HOLIDAY:
        yield Protection(ProtectionRule.HOLIDAY, f"statutory holiday {day.isoformat()}", tomorrow)
    if windows.holidays and status is DayStatus.UNKNOWN:
        yield Protection(
            ProtectionRule.CALENDAR_UNKNOWN,
            f"holiday calendar has no data for {day.isoformat()}: treated as a holiday "
            f"(publish the year's arrangement, PUT /v1/calendar/{day.year}, or update chinese-calendar)",
            tomorrow,
        )
    # An adjusted working day (调休) is a working day even on a Saturday or Sunday.
    if windows.weekends and day.weekday() >= _SATURDAY and status is not DayStatus.ADJUSTED_WORKDAY:
        yield Protection(ProtectionRule.WEEKEND, f"weekend {day.isoformat()} ({day:%A})", tomorrow)
    nights = windows.nights
    if nights is not None:
        wall = local.time().replace(tzinfo=None)
        if nights.contains(wall):
            ends_on = day + timedelta(days=1) if nights.crosses_midnight and wall >= nights.start else day
            yield Protection(
                ProtectionRule.NIGHT,
                f"night {nights.start:%H:%M}–{nights.end:%H:%M} local",
                _local_instant(ends_on, nights.end, tz),
            )


def _local_instant(day: date, wall: time, tz: tzinfo) -> datetime:
    return datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
