"""The shared time-proration billing prices and books usage with: exact sums, the documented cut, hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_billing.domain import BillingDomainError, periods
from shuidian_shared.proration import PRORATA_QUANTUM, apportion, hour_spans, hourly_shares

T0 = datetime(2030, 10, 31, 15, 40, tzinfo=UTC)  # 23:40 local on 31 October


def test_documented_example_three_kwh_over_ninety_minutes() -> None:
    shares = hourly_shares(Decimal(3), T0.replace(hour=9), T0.replace(hour=11, minute=10))
    assert shares == [
        (T0.replace(hour=9, minute=0), Decimal("0.666667")),
        (T0.replace(hour=10, minute=0), Decimal("2.000000")),
        (T0.replace(hour=11, minute=0), Decimal("0.333333")),
    ]


def test_a_gap_across_local_midnight_books_each_hour_its_time() -> None:
    """October's usage stays in October: 23:40 → 01:10 local is 20 + 60 + 10 minutes."""
    shares = hourly_shares(Decimal("9"), T0, T0 + timedelta(minutes=90))
    assert [(hour.astimezone(UTC).hour, part) for hour, part in shares] == [
        (15, Decimal("2.000000")),
        (16, Decimal("6.000000")),
        (17, Decimal("1.000000")),
    ]


def test_an_interval_ending_on_the_hour_stays_in_the_hour_before() -> None:
    start, end = T0.replace(minute=45), T0.replace(hour=16, minute=0)
    assert hourly_shares(Decimal("0.25"), start, end) == [(T0.replace(minute=0), Decimal("0.25"))]


def test_an_empty_interval_books_everything_in_the_hour_of_its_end() -> None:
    assert hourly_shares(Decimal("1.5"), T0, T0) == [(T0.replace(minute=0), Decimal("1.5"))]
    assert hour_spans(T0, T0) == [(T0.replace(minute=0), T0, T0)]


def test_refusals() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        hourly_shares(Decimal(1), T0, T0 - timedelta(seconds=1))
    with pytest.raises(ValueError, match="at least one weight"):
        apportion(Decimal(1), [])
    with pytest.raises(ValueError, match="not all be zero"):
        apportion(Decimal(1), [0, 0])
    with pytest.raises(BillingDomainError):  # billing's wrapper keeps its domain error
        periods.apportion(Decimal(1), [-1, 2])


@given(
    total=st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 40),
    offset=st.integers(min_value=0, max_value=3599),
)
def test_hourly_parts_sum_exactly_and_sit_inside_the_interval(total: Decimal, minutes: int, offset: int) -> None:
    start = T0.replace(minute=0) + timedelta(seconds=offset)
    end = start + timedelta(minutes=minutes)
    shares = hourly_shares(total, start, end)
    assert sum((part for _, part in shares), Decimal(0)) == total
    assert all(part >= 0 and part == part.quantize(PRORATA_QUANTUM) for _, part in shares)
    hours = [hour for hour, _ in shares]
    assert hours == sorted(set(hours))
    assert hours[0] <= start
    assert minutes == 0 or hours[-1] < end


@given(
    total=st.decimals(min_value=0, max_value=10**4, places=10, allow_nan=False, allow_infinity=False),
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30).filter(any),
)
def test_billing_and_the_shared_rule_agree(total: Decimal, weights: list[int]) -> None:
    assert periods.apportion(total, weights) == apportion(total, weights)
    cost_parts = apportion(total, weights, Decimal("1E-10"))
    assert sum(cost_parts, Decimal(0)) == total
