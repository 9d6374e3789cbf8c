"""A meter's own consumption baseline per local hour of day and day type, robust to the spikes it detects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Asia/Shanghai"
# Baselines are persisted as JSON on every update; six decimals (1 Wh, 1 mL) keep them short without losing signal.
QUANTUM = Decimal("0.000001")


class DayType(StrEnum):
    WORKDAY = "workday"
    REST_DAY = "rest_day"  # weekends and public holidays


@dataclass(frozen=True, kw_only=True)
class Calendar:
    """The local time zone and the public-holiday calendar that decide hour of day and day type."""

    timezone: str = DEFAULT_TIMEZONE
    holidays: frozenset[date] = frozenset()
    # Weekend days worked in exchange for a holiday bridge (调休) count as workdays.
    workdays: frozenset[date] = frozenset()

    def local(self, at: datetime) -> datetime:
        """`at` (aware) as local wall-clock time."""
        return at.astimezone(ZoneInfo(self.timezone))

    def day_type(self, day: date) -> DayType:
        """Workday or rest day for a local date."""
        if day in self.workdays:
            return DayType.WORKDAY
        if day in self.holidays or day.weekday() >= 5:
            return DayType.REST_DAY
        return DayType.WORKDAY


def china_calendar(timezone: str = DEFAULT_TIMEZONE) -> Calendar:
    """Mainland China's public holidays and in-lieu workdays (调休) as published, from `chinese-calendar`."""
    import chinese_calendar  # type: ignore[import-untyped]

    return Calendar(
        timezone=timezone,
        holidays=frozenset(chinese_calendar.holidays),
        workdays=frozenset(chinese_calendar.workdays),
    )


@dataclass(frozen=True, kw_only=True)
class Bucket:
    """Exponentially weighted mean and mean absolute deviation of one (day type, hour) bucket."""

    mean: Decimal
    deviation: Decimal
    samples: int


Baseline = Mapping[str, Bucket]
"""Buckets by `bucket_key`; at most 48 per meter."""


def bucket_key(calendar: Calendar, hour_start: datetime) -> str:
    """The bucket an hour of consumption belongs to, e.g. ``"workday:19"``."""
    local = calendar.local(hour_start)
    return f"{calendar.day_type(local.date()).value}:{local.hour:02d}"


def update_bucket(bucket: Bucket | None, value: Decimal, alpha: Decimal) -> Bucket:
    """Fold one hour's consumption into its bucket."""
    if bucket is None:
        return Bucket(mean=_quantize(value), deviation=Decimal(0), samples=1)
    # A plain running average until 1/n drops below alpha, so the first week does not dominate for months.
    weight = max(alpha, Decimal(1) / (bucket.samples + 1))
    deviation = bucket.deviation + weight * (abs(value - bucket.mean) - bucket.deviation)
    mean = bucket.mean + weight * (value - bucket.mean)
    return Bucket(mean=_quantize(mean), deviation=_quantize(deviation), samples=bucket.samples + 1)


def spike_limit(bucket: Bucket, ratio: Decimal, floor: Decimal, deviations: Decimal) -> Decimal:
    """Consumption above this is a spike: max(ratio × mean, mean + max(floor, deviations × MAD))."""
    return max(ratio * bucket.mean, bucket.mean + max(floor, deviations * bucket.deviation))


def _quantize(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
