"""Hourly consumption from cumulative registers: exact splits at hour boundaries, gaps, resets, conservation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_alarm.domain.usage import HourlyState, accumulate
from shuidian_shared.messages import Reading, Utility

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def kwh(at: datetime, value: str, meter: str = "m-1") -> Reading:
    return Reading.create(meter, Utility.ELECTRICITY, at, registers={"energy_active_import_total": Decimal(value)})


def feed(steps: list[tuple[int, str]], max_gap: timedelta = timedelta(hours=1)) -> list[tuple[int, str]]:
    """(minutes after T0, register) in; (hour start in minutes after T0, quantity) of every completed hour out."""
    state: HourlyState | None = None
    hours = []
    for minutes, value in steps:
        state, done = accumulate(state, kwh(T0 + minutes * MIN, value), max_gap)
        hours += [(int((h.hour_start - T0) / MIN), f"{h.quantity.normalize():f}") for h in done]
    return hours


CASES = [
    (
        "every 15 minutes from the top of the hour",
        [(0, "10"), (15, "10.5"), (30, "11"), (45, "11"), (60, "12")],
        [(0, "2")],
    ),
    ("a start mid-hour is no complete hour", [(7, "10"), (30, "11"), (60, "12"), (120, "13")], [(60, "1")]),
    (
        "a delta across the boundary is split by time",
        [(0, "10"), (50, "11"), (70, "13"), (120, "14")],
        [(0, "2"), (60, "2")],
    ),
    ("a gap longer than max_gap drops both hours", [(0, "10"), (30, "11"), (100, "12"), (180, "13")], []),
    (
        "a register going backwards starts afresh",
        [(0, "10"), (30, "11"), (40, "2"), (60, "3"), (120, "4")],
        [(60, "1")],
    ),
    (
        "duplicates and late readings are ignored",
        [(0, "10"), (30, "11"), (30, "99"), (20, "0"), (60, "12")],
        [(0, "2")],
    ),
    ("readings without a cumulative register say nothing", [(0, "10"), (60, "11")], [(0, "1")]),
]


@pytest.mark.parametrize(("steps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hourly_consumption(steps: list[tuple[int, str]], expected: list[tuple[int, str]]) -> None:
    assert feed(steps) == expected


def test_a_long_but_allowed_interval_fills_every_hour_it_spans() -> None:
    # 30..150 carries 4: a quarter to hour 0 (with its own 1), half to hour 1, a quarter to hour 2 (plus the next 1).
    assert feed([(0, "0"), (30, "1"), (150, "5"), (180, "6")], max_gap=timedelta(hours=3)) == [
        (0, "2"),
        (60, "2"),
        (120, "2"),
    ]


@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=59), st.integers(min_value=0, max_value=5000)),
        min_size=1,
        max_size=80,
    )
)
def test_consumption_is_conserved(steps: list[tuple[int, int]]) -> None:
    """Hours reported plus the hour under way add up to the register's rise exactly, whatever the spacing."""
    state, at, value, reported = None, T0, Decimal(100), Decimal(0)
    state, _ = accumulate(state, kwh(at, "100"))
    for minutes, watt_hours in steps:
        at += minutes * MIN
        value += Decimal(watt_hours) / 1000
        state, done = accumulate(state, kwh(at, f"{value}"))
        reported += sum((h.quantity for h in done), Decimal(0))
    assert state.quantity + reported == value - 100
    assert state.complete
