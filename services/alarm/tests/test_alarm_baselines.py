"""Baselines: day types from the holiday calendar, robust bucket updates, the spike limit."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from shuidian_alarm.domain.baselines import (
    Bucket,
    Calendar,
    DayType,
    bucket_key,
    china_calendar,
    spike_limit,
    update_bucket,
)

# 2024: National Day holidays 1–7 October, with Sunday 29 September and Saturday 12 October worked (调休).
NATIONAL_DAY = Calendar(
    holidays=frozenset(date(2024, 10, d) for d in range(1, 8)),
    workdays=frozenset({date(2024, 9, 29), date(2024, 10, 12)}),
)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 9, 27), DayType.WORKDAY),  # Friday
        (date(2024, 9, 28), DayType.REST_DAY),  # Saturday
        (date(2024, 9, 29), DayType.WORKDAY),  # Sunday worked in exchange
        (date(2024, 10, 1), DayType.REST_DAY),  # Tuesday, public holiday
        (date(2024, 10, 7), DayType.REST_DAY),  # Monday, public holiday
        (date(2024, 10, 8), DayType.WORKDAY),
        (date(2024, 10, 12), DayType.WORKDAY),  # Saturday worked in exchange
        (date(2024, 10, 13), DayType.REST_DAY),
    ],
)
def test_day_type_follows_the_holiday_calendar(day: date, expected: DayType) -> None:
    assert NATIONAL_DAY.day_type(day) is expected


@pytest.mark.parametrize(
    ("instant", "timezone", "key"),
    [
        # 16:30 UTC on Monday 30 September is 00:30 on Tuesday 1 October in Shanghai: a holiday hour.
        (datetime(2024, 9, 30, 16, 30, tzinfo=UTC), "Asia/Shanghai", "rest_day:00"),
        (datetime(2024, 9, 30, 15, 30, tzinfo=UTC), "Asia/Shanghai", "workday:23"),
        (datetime(2024, 9, 30, 16, 30, tzinfo=UTC), "UTC", "workday:16"),
    ],
)
def test_bucket_key_uses_local_hour_and_day(instant: datetime, timezone: str, key: str) -> None:
    calendar = Calendar(timezone=timezone, holidays=NATIONAL_DAY.holidays)
    assert bucket_key(calendar, instant) == key


def test_first_samples_average_plainly_then_weigh_exponentially() -> None:
    bucket = None
    for value in ("1", "2", "3"):
        bucket = update_bucket(bucket, Decimal(value), Decimal("0.1"))
    assert bucket == Bucket(mean=Decimal("2.000000"), deviation=Decimal("0.833333"), samples=3)
    for _ in range(20):
        bucket = update_bucket(bucket, Decimal("2"), Decimal("0.1"))
    late = update_bucket(bucket, Decimal("12"), Decimal("0.1"))
    assert late.mean - bucket.mean == Decimal("1.000000")  # alpha 0.1 of the 10 above, not 1/24


@pytest.mark.parametrize(
    ("mean", "deviation", "expected"),
    [
        ("2", "0", "6"),  # ratio dominates: 3 × 2
        ("0", "0", "0.5"),  # a silent hour: the floor
        ("0.1", "0", "0.6"),  # mean + floor beats 3 × mean
        ("1", "0.5", "3"),  # 4 × MAD = 2 over the mean ties with 3 × mean
        ("1", "1", "5"),  # an erratic meter widens the band to mean + 4 × MAD
    ],
)
def test_spike_limit(mean: str, deviation: str, expected: str) -> None:
    bucket = Bucket(mean=Decimal(mean), deviation=Decimal(deviation), samples=10)
    assert spike_limit(bucket, Decimal(3), Decimal("0.5"), Decimal(4)) == Decimal(expected)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 10, 1), DayType.REST_DAY),  # National Day
        (date(2024, 10, 12), DayType.WORKDAY),  # Saturday worked in exchange
        (date(2024, 10, 14), DayType.WORKDAY),
    ],
)
def test_the_default_calendar_knows_chinese_holidays(day: date, expected: DayType) -> None:
    assert china_calendar().day_type(day) is expected
