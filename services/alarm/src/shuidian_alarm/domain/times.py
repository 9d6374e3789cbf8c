"""Time as the detectors use it: aware instants only, a tolerance for clocks ahead, exact durations, ISO text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

FUTURE_TOLERANCE: Final = timedelta(minutes=5)
HOUR: Final = timedelta(hours=1)
ZERO: Final = timedelta(0)


def aware(at: datetime) -> None:
    """Raise ValueError unless `at` is timezone-aware."""
    if at.tzinfo is UTC:  # the common case, checked first: this runs for every rule on every observation
        return
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")


def fresh(last: datetime | None, at: datetime, now: datetime) -> bool:
    """Whether an observation at `at` is newer than the last one taken in and not too far ahead of `now`."""
    return (last is None or at > last) and at <= now + FUTURE_TOLERANCE


def seconds(span: timedelta) -> Decimal:
    """A duration in seconds, exact, unlike timedelta.total_seconds(), which is a float."""
    return Decimal(span.days * 86400 + span.seconds) + Decimal(span.microseconds) / 1_000_000


def minutes(span: timedelta) -> str:
    """A duration in minutes as alarm texts show it ("10", "2.5")."""
    return f"{(seconds(span) / 60).normalize():f}"


def iso(at: datetime) -> str:
    """An instant as ISO 8601 text in UTC."""
    return at.astimezone(UTC).isoformat()
