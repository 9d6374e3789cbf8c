"""Local calendar periods, interval boundaries and exact pro-rata splits (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import StrEnum

from shuidian_billing.domain import BillingDomainError
from shuidian_shared import proration

# China has kept UTC+8 without daylight saving since 1991, so a fixed offset is exact for every
# date we bill and needs no tz database read; callers elsewhere pass a ZoneInfo instead.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")

PRORATA_QUANTUM = proration.PRORATA_QUANTUM
"""Pro-rata parts are cut at this step (1e-6 units); the last part takes the exact rest."""


class CalendarPeriod(StrEnum):
    """A local calendar period over which tier (阶梯) usage accumulates."""

    MONTH = "month"
    YEAR = "year"


def as_utc(value: datetime) -> datetime:
    """Return `value` in UTC; refuse naive datetimes."""
    if value.tzinfo is UTC:
        return value  # the hot path: readings arrive in UTC already
    if value.tzinfo is None or value.utcoffset() is None:
        raise BillingDomainError(f"datetime must be timezone-aware: {value!r}")
    return value.astimezone(UTC)


def microseconds(span: timedelta) -> int:
    """Whole microseconds in `span` (the integer weight used for pro-rata by time)."""
    return proration.microseconds(span)


def period_start(kind: CalendarPeriod, at: datetime, tz: tzinfo = CHINA_STANDARD_TIME) -> datetime:
    """UTC start of the local month or year that contains `at`."""
    local = as_utc(at).astimezone(tz)
    month = local.month if kind is CalendarPeriod.MONTH else 1
    return datetime(local.year, month, 1, tzinfo=tz).astimezone(UTC)


def period_end(kind: CalendarPeriod, at: datetime, tz: tzinfo = CHINA_STANDARD_TIME) -> datetime:
    """UTC end (exclusive) of the local month or year that contains `at`."""
    local = as_utc(at).astimezone(tz)
    if kind is CalendarPeriod.YEAR or local.month == 12:
        year, month = local.year + 1, 1
    else:
        year, month = local.year, local.month + 1
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


def month_starts_between(start: datetime, end: datetime, tz: tzinfo = CHINA_STANDARD_TIME) -> list[datetime]:
    """UTC instants of local month starts strictly inside (start, end)."""
    start, end = as_utc(start), as_utc(end)
    found: list[datetime] = []
    boundary = period_end(CalendarPeriod.MONTH, start, tz)
    while boundary < end:
        found.append(boundary)
        boundary = period_end(CalendarPeriod.MONTH, boundary, tz)
    return found


def apportion(total: Decimal, weights: Sequence[int | Decimal]) -> tuple[Decimal, ...]:
    """Split `total` pro rata to non-negative `weights` so the parts sum exactly to `total`.

    The project's one time-proration rule (`shuidian_shared.proration.apportion`: cumulative
    rounding half-even to PRORATA_QUANTUM, the last cut is `total` itself), with its refusals as
    billing's domain error.
    """
    try:
        return proration.apportion(total, weights)
    except ValueError as err:
        raise BillingDomainError(str(err)) from err
