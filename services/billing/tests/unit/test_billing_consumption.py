"""Consumption from cumulative registers: outcomes, explicit events and the delivery invariant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.consumption import (
    Advance,
    HoldReason,
    MeterReplaced,
    MultiplierChanged,
    Outcome,
    RegisterReading,
    RolloverDeclared,
    Watermark,
    advance,
    apply_event,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
RATE = Decimal("20")  # kWh per hour
D = Decimal


def reading(value: str | Decimal, minutes: int, register: str = "total") -> RegisterReading:
    return RegisterReading("m1", register, Decimal(value), T0 + timedelta(minutes=minutes))


def mark(value: str, minutes: int = 0, multiplier: str = "1") -> Watermark:
    return Watermark("m1", "total", D(value), T0 + timedelta(minutes=minutes), D(multiplier))


@pytest.mark.parametrize(
    ("watermark", "new", "rollover", "outcome", "billed", "moved", "reason"),
    [
        (None, reading("100.00", 0), False, Outcome.OPENED, "0", True, None),
        (mark("100.00"), reading("101.50", 15), False, Outcome.BILLED, "1.50", True, None),
        (mark("100.00", multiplier="50"), reading("100.10", 15), False, Outcome.BILLED, "5.00", True, None),
        (mark("100.00"), reading("100.00", 15), False, Outcome.UNCHANGED, "0", True, None),
        (mark("100.00", 15), reading("100.50", 15), False, Outcome.DUPLICATE, "0", False, None),
        (mark("100.00", 15), reading("99.00", 0), False, Outcome.STALE, "0", False, None),
        (mark("100.00"), reading("99.00", 15), False, Outcome.HELD, "0", False, HoldReason.REGISTER_DECREASED),
        (mark("100.00"), reading("150.00", 15), False, Outcome.HELD, "0", False, HoldReason.IMPLAUSIBLE_JUMP),
        (mark("100.00"), reading("1000000.00", 15), False, Outcome.HELD, "0", False, HoldReason.OUT_OF_RANGE),
        (mark("100.00"), reading("-1", 15), False, Outcome.HELD, "0", False, HoldReason.OUT_OF_RANGE),
        # A long gap makes a large delta plausible again.
        (mark("100.00"), reading("150.00", 180), False, Outcome.BILLED, "50.00", True, None),
        (mark("999999.00"), reading("1.00", 15), True, Outcome.ROLLOVER, "2.00", True, None),
        (mark("999999.99"), reading("0.00", 15), True, Outcome.ROLLOVER, "0.01", True, None),
        (mark("999999.00"), reading("1.00", 15), False, Outcome.HELD, "0", False, HoldReason.REGISTER_DECREASED),
        # Allowed rollover, but the wrapped delta is far beyond plausible: a decrease, held.
        (mark("500.00"), reading("400.00", 15), True, Outcome.HELD, "0", False, HoldReason.REGISTER_DECREASED),
    ],
)
def test_advance_outcomes(
    watermark: Watermark | None,
    new: RegisterReading,
    rollover: bool,
    outcome: Outcome,
    billed: str,
    moved: bool,
    reason: HoldReason | None,
) -> None:
    result = advance(watermark, new, max_plausible_rate=RATE, allow_rollover=rollover)
    assert result.outcome is outcome
    assert result.billed == D(billed)
    assert result.hold_reason is reason
    if moved:
        assert result.watermark is not None
        assert result.watermark.sampled_at == new.sampled_at
        assert result.watermark.value == new.value
    else:
        assert result.watermark == watermark


def test_interval_runs_from_watermark_to_reading() -> None:
    result = advance(mark("1.00"), reading("2.00", 15), max_plausible_rate=RATE)
    assert result.interval == (T0, T0 + timedelta(minutes=15))


def test_first_reading_out_of_range_is_held_without_watermark() -> None:
    result = advance(None, reading("-5", 0), max_plausible_rate=RATE)
    assert (result.outcome, result.watermark) == (Outcome.HELD, None)


def test_opening_uses_given_multiplier_and_register_max() -> None:
    result = advance(None, reading("9.5", 0), max_plausible_rate=RATE, multiplier=D(40), register_max=D("9999.9"))
    assert result.watermark is not None
    assert (result.watermark.multiplier, result.watermark.modulus) == (D(40), D("10000.0"))


def test_reading_of_another_register_is_refused() -> None:
    with pytest.raises(BillingDomainError):
        advance(mark("1"), reading("2", 15, register="tariff1"), max_plausible_rate=RATE)


def test_naive_time_is_refused() -> None:
    with pytest.raises(BillingDomainError):
        RegisterReading("m1", "total", D(1), datetime(2024, 1, 1))  # noqa: DTZ001


def test_tariff_registers_are_tracked_independently() -> None:
    peak = Watermark("m1", "peak", D("10.00"), T0)
    valley = Watermark("m1", "valley", D("20.00"), T0)
    later = T0 + timedelta(hours=1)
    a = advance(peak, RegisterReading("m1", "peak", D("11.25"), later), max_plausible_rate=RATE)
    b = advance(valley, RegisterReading("m1", "valley", D("20.50"), later), max_plausible_rate=RATE)
    assert (a.billed, b.billed) == (D("1.25"), D("0.50"))


@pytest.mark.parametrize(
    ("event", "outcome", "tail", "value", "multiplier"),
    [
        (MeterReplaced(D("105.00"), D("0.00"), T0 + timedelta(hours=1)), Outcome.METER_REPLACED, "10.00", "0.00", "2"),
        (
            MeterReplaced(D("100.00"), D("3.00"), T0, new_multiplier=D(1)),
            Outcome.METER_REPLACED,
            "0",
            "3.00",
            "1",
        ),
        (
            MultiplierChanged(D(50), T0 + timedelta(hours=2), D("101.00")),
            Outcome.MULTIPLIER_CHANGED,
            "2.00",
            "101.00",
            "50",
        ),
        (RolloverDeclared(D("4.00"), T0 + timedelta(hours=3)), Outcome.ROLLOVER, "1999808.00", "4.00", "2"),
    ],
)
def test_explicit_events(event: object, outcome: Outcome, tail: str, value: str, multiplier: str) -> None:
    watermark = mark("100.00", multiplier="2")
    assert isinstance(event, MeterReplaced | MultiplierChanged | RolloverDeclared)
    result = apply_event(watermark, event)
    assert result.outcome is outcome
    assert result.billed == D(tail)
    assert result.watermark is not None
    assert (result.watermark.value, result.watermark.multiplier) == (D(value), D(multiplier))
    assert result.watermark.sampled_at == event.at


@pytest.mark.parametrize(
    "event",
    [
        MeterReplaced(D("99.00"), D("0"), T0 + timedelta(hours=1)),  # closing below the watermark
        MeterReplaced(D("105.00"), D("0"), T0 - timedelta(hours=1)),  # before the last reading
        MultiplierChanged(D(2), T0 + timedelta(hours=1), D("50")),
        RolloverDeclared(D("1"), T0),  # must follow the watermark
        RolloverDeclared(D("1000000"), T0 + timedelta(hours=1)),
    ],
)
def test_impossible_events_are_refused(event: MeterReplaced | MultiplierChanged | RolloverDeclared) -> None:
    with pytest.raises(BillingDomainError):
        apply_event(mark("100.00"), event)


def test_readings_after_replacement_bill_from_the_new_opening() -> None:
    replaced = apply_event(mark("100.00"), MeterReplaced(D("100.40"), D("0.00"), T0 + timedelta(minutes=20)))
    assert replaced.watermark is not None
    # A new-meter reading before the event was recorded would have been HELD (register down);
    # after it, billing continues from the new opening register.
    after = advance(replaced.watermark, reading("0.30", 30), max_plausible_rate=RATE)
    assert (after.outcome, after.billed, replaced.billed) == (Outcome.BILLED, D("0.30"), D("0.40"))


# --- the delivery invariant -------------------------------------------------------------

MODULUS = D("1000000.00")


@st.composite
def register_series(draw: st.DrawFn, wraps: bool = False) -> list[RegisterReading]:
    """A clean series: increasing sample times, non-decreasing consumption, maybe wrapping."""
    start = draw(st.integers(0, 99_000_000)) if not wraps else draw(st.integers(99_990_000, 99_999_999))
    count = draw(st.integers(1, 30))
    value = start
    minutes = 0
    series = []
    for _ in range(count):
        series.append(reading(D(value % 100_000_000) / 100, minutes))
        minutes += draw(st.integers(15, 120))
        value += draw(st.integers(0, 500))  # ≤ 5 kWh per ≥ 15 min: plausible at 20 kWh/h
    return series


@st.composite
def messy_delivery(draw: st.DrawFn, wraps: bool = False) -> tuple[list[RegisterReading], list[RegisterReading]]:
    """A clean series and a delivery of it: duplicated, reordered and with gaps."""
    series = draw(register_series(wraps=wraps))
    kept = [r for r in series if draw(st.booleans()) or r is series[-1]]
    duplicated = kept + draw(st.lists(st.sampled_from(kept), max_size=10))
    delivered = draw(st.permutations(duplicated))
    return series, delivered


def replay(delivered: list[RegisterReading], multiplier: Decimal, rollover: bool) -> tuple[Decimal, list[Advance]]:
    watermark = None
    total = D(0)
    results = []
    for r in delivered:
        result = advance(
            watermark,
            r,
            max_plausible_rate=RATE * multiplier,  # the rate is in billed units
            allow_rollover=rollover,
            multiplier=multiplier,
        )
        total += result.billed
        watermark = result.watermark
        results.append(result)
    return total, results


@settings(max_examples=300)
@given(messy_delivery(), st.sampled_from([D(1), D(30), D("2.5")]))
def test_any_delivery_bills_last_minus_opening(
    case: tuple[list[RegisterReading], list[RegisterReading]], multiplier: Decimal
) -> None:
    series, delivered = case
    total, results = replay(delivered, multiplier, rollover=False)
    opening = delivered[0].value
    last = max(delivered, key=lambda r: r.sampled_at)
    # An early register that arrives after the opening one is older, hence STALE: never billed.
    assert all(r.outcome is not Outcome.HELD for r in results)
    assert total == (last.value - opening) * multiplier
    final = results[-1].watermark
    assert final is not None
    assert final.sampled_at == last.sampled_at
    # Consistent with a clean delivery from the same opening reading onward.
    clean = [r for r in series if r.sampled_at >= delivered[0].sampled_at and r in delivered]
    clean_total, _ = replay(clean, multiplier, rollover=False)
    assert clean_total == total


@settings(max_examples=300)
@given(messy_delivery(wraps=True))
def test_rollover_at_register_max_is_counted_across_wraps(
    case: tuple[list[RegisterReading], list[RegisterReading]],
) -> None:
    _, delivered = case
    total, results = replay(delivered, D(1), rollover=True)
    opening = delivered[0].value
    last = max(delivered, key=lambda r: r.sampled_at)
    wraps = sum(1 for r in results if r.outcome is Outcome.ROLLOVER)
    assert total == last.value - opening + wraps * MODULUS
    assert total >= 0


def test_stream_across_two_wraps_duplicated_and_reordered() -> None:
    # Register wraps twice in a (fictional, tiny-register) meter: 9999.9 wraps at 10000.0.
    values = ["9990.0", "9999.9", "4.0", "9000.0", "9999.0", "6.0"]
    series = [RegisterReading("m1", "total", D(v), T0 + timedelta(hours=12 * i)) for i, v in enumerate(values)]
    delivery = [series[0], series[2], series[1], series[2], series[3], series[5], series[4], series[5]]
    watermark = None
    total = D(0)
    outcomes = []
    for r in delivery:
        result = advance(watermark, r, max_plausible_rate=D(1000), allow_rollover=True, register_max=D("9999.9"))
        total, watermark = total + result.billed, result.watermark
        outcomes.append(result.outcome)
    assert outcomes == [
        Outcome.OPENED,
        Outcome.ROLLOVER,
        Outcome.STALE,
        Outcome.DUPLICATE,
        Outcome.BILLED,
        Outcome.ROLLOVER,
        Outcome.STALE,
        Outcome.DUPLICATE,
    ]
    assert total == D("6.0") - D("9990.0") + 2 * D("10000.0")
