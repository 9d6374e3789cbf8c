"""Protected windows: when a cut-off must wait (nights, weekends, statutory holidays, operator holds, blackouts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

from shuidian_control.domain.calendar import SATURDAY, DayStatus, HolidayCalendar
from shuidian_control.errors import NoAllowedInstant

# Every window is half-open, [start, end): protected at 22:00:00, allowed at 07:00:00. Rules are evaluated in
# local time; instants go in and come out as aware UTC. A date the holiday calendar does not cover (a year the
# chinese-calendar data does not know yet) counts as a holiday while holidays are protected: not cutting power
# is the safe way to be wrong, and the Protection's detail says to update the package.

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_HORIZON = timedelta(days=60)


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


@dataclass(frozen=True)
class Moment:
    """One instant as the rules look at it: UTC, local wall clock, local date and what the calendar says of it."""

    utc: datetime
    local: datetime
    day: date
    status: DayStatus  # REGULAR when neither holidays nor weekends are protected (the calendar is not asked)
    tomorrow: datetime  # the local midnight that ends `day`, as aware UTC
    tz: tzinfo


# A protection rule: the protections it finds at a moment under an estate's windows (usually none or one).
ProtectionRuleFn = Callable[[Moment, ProtectedWindows], Iterator[Protection]]


def _operator_hold(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    hold = windows.hold
    if hold is not None and (hold.until is None or at.utc < hold.until):
        yield Protection(ProtectionRule.OPERATOR_HOLD, f"operator no-cut-off switch: {hold.reason}", hold.until)


def _blackouts(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    for blackout in windows.blackouts:
        if blackout.start <= at.utc < blackout.end:
            yield Protection(ProtectionRule.BLACKOUT, f"blackout period: {blackout.reason}", blackout.end)


def _holiday(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    if windows.holidays and at.status is DayStatus.HOLIDAY:
        yield Protection(ProtectionRule.HOLIDAY, f"statutory holiday {at.day.isoformat()}", at.tomorrow)


def _calendar_unknown(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    if windows.holidays and at.status is DayStatus.UNKNOWN:
        yield Protection(
            ProtectionRule.CALENDAR_UNKNOWN,
            f"holiday calendar has no data for {at.day.isoformat()}: treated as a holiday "
            f"(publish the year's arrangement, PUT /v1/calendar/{at.day.year}, or update chinese-calendar)",
            at.tomorrow,
        )


def _weekend(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    # An adjusted working day (调休) is a working day even on a Saturday or Sunday.
    day = at.day
    if windows.weekends and day.weekday() >= SATURDAY and at.status is not DayStatus.ADJUSTED_WORKDAY:
        yield Protection(ProtectionRule.WEEKEND, f"weekend {day.isoformat()} ({day:%A})", at.tomorrow)


def _night(at: Moment, windows: ProtectedWindows) -> Iterator[Protection]:
    nights = windows.nights
    if nights is None:
        return
    wall = at.local.time().replace(tzinfo=None)
    if nights.contains(wall):
        ends_on = at.day + timedelta(days=1) if nights.crosses_midnight and wall >= nights.start else at.day
        yield Protection(
            ProtectionRule.NIGHT,
            f"night {nights.start:%H:%M}–{nights.end:%H:%M} local",
            _local_instant(ends_on, nights.end, at.tz),
        )


# Every protection rule, in the order they are reported (`is_protected` names the first that applies). A new rule
# is a ProtectionRule member, one function above and one entry here; `next_allowed` and every decision follow.
PROTECTION_RULES: tuple[ProtectionRuleFn, ...] = (
    _operator_hold,
    _blackouts,
    _holiday,
    _calendar_unknown,
    _weekend,
    _night,
)


def _protections(
    now: datetime, windows: ProtectedWindows, calendar: HolidayCalendar, tz: tzinfo
) -> Iterator[Protection]:
    _require_aware(now, "now")
    utc = now.astimezone(UTC)
    local = utc.astimezone(tz)
    day = local.date()
    status = calendar.status(day) if windows.holidays or windows.weekends else DayStatus.REGULAR
    at = Moment(utc, local, day, status, _local_instant(day + timedelta(days=1), time(0), tz), tz)
    for rule in PROTECTION_RULES:
        yield from rule(at, windows)


def _local_instant(day: date, wall: time, tz: tzinfo) -> datetime:
    return datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
