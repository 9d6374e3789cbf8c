"""The chaos suite's checker: it must fail on drift, lost or false readings and wrong relays, and pass on exact books."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shuidian_devstack.chaos_checker import MeterFacts, Observed, Payment, TrueRegister, judge, unbilled_batches

PRICES = {"electricity": Decimal("0.60"), "water": Decimal("4.50")}
METERS = [MeterFacts("E-A101", "A101", "electricity", Decimal("1000"))]
# The meter was asked at t=10 (first poll: the opening), 20, 30 and 40; it advanced 0.5 kWh between polls.
INTERVALS = [(0.0, 10.0, "0.004"), (10.0, 20.0, "0.5"), (20.0, 30.0, "0.5"), (30.0, 40.0, "0.5")]
OPENING = Decimal("1000.00")  # 1000.004 shown truncated
LAST = Decimal("1001.50")  # 1001.504 shown truncated
PAID = [Payment("A101", Decimal("5.00"), 1.0)]
EXACT = Decimal("5.00") - PRICES["electricity"] * (LAST - OPENING)  # 4.10


def truth(relay: list[tuple[float, bool]] | None = None, first_advanced_at: float | None = 10.0) -> dict[str, Any]:
    return {
        "first_advanced_at": first_advanced_at,
        "intervals": [{"from": a, "to": b, "quantity": q, "registered": q} for a, b, q in INTERVALS],
        "relay_history": [{"at": at, "open": is_open} for at, is_open in relay or []],
    }


def observed(
    *,
    watermark: tuple[Decimal, float] = (LAST, 40.01),
    collector_last: float = 40.01,
    available: Decimal = EXACT,
    relay: list[tuple[float, bool]] | None = None,
) -> Observed:
    return Observed(
        watermarks={"E-A101": watermark},
        collector_last={"E-A101": collector_last},
        ledger_mismatches=[],
        held=0,
        truths={"E-A101": truth(relay)},
        available={"A101": available},
    )


def verdict(seen: Observed, payments: list[Payment] = PAID) -> dict[str, Any]:
    return judge(
        seen,
        published={},
        meters=METERS,
        prices=PRICES,
        payments=payments,
        frozen_at=45.0,
        relay_window_s=10.0,
        hysteresis=Decimal("1.00"),
    )


def test_true_register_is_the_initial_register_plus_every_interval_truncated_to_hundredths() -> None:
    series = TrueRegister.from_truth(Decimal("1000"), truth())
    assert series.opening == OPENING
    assert [series.at(t) for t in (5.0, 10.0, 25.0, 99.0)] == [
        Decimal("1000.00"),
        OPENING,
        Decimal("1000.50"),
        LAST,
    ]
    # A reading's own poll ends an interval, so the registers shown near a sample time are those of the
    # interval ends shortly before it (and the one shown at it).
    assert series.near(31.0, 2.0) == {Decimal("1001.00")}
    assert series.near(31.0, 12.0) == {Decimal("1000.50"), Decimal("1001.00")}


def test_a_first_poll_before_anything_flowed_opens_at_the_initial_register() -> None:
    # The collector first polled at t=5, when nothing had been registered: no interval ends there, so the
    # register billing opened at is the initial one, not the first interval's (1000.00 either way here) ...
    assert TrueRegister.from_truth(Decimal("1000"), truth(first_advanced_at=5.0)).opening == Decimal("1000.00")
    # ... and with an initial register one step below a hundredth, the difference is one register step.
    series = TrueRegister.from_truth(Decimal("999.998"), truth(first_advanced_at=5.0))
    assert series.opening == Decimal("999.99")
    assert TrueRegister.from_truth(Decimal("999.998"), truth()).opening == Decimal("1000.00")


def test_exact_books_pass() -> None:
    result = verdict(observed())
    assert result["failures"] == []
    assert result["drift_fen"] == "0"
    assert result["supplied"] == 1


def test_one_fen_of_drift_fails() -> None:
    result = verdict(observed(available=EXACT + Decimal("0.01")))
    assert result["failures"] == ["money drift on 1 account(s)"]
    assert Decimal(result["drift"][0]["drift"]) == Decimal("0.01")


def test_a_final_reading_billing_never_got_is_lost_and_its_consumption_is_drift() -> None:
    # Billing stopped at the t=30 reading; the collector read the meter again at t=40.
    unbilled = Decimal("5.00") - PRICES["electricity"] * (Decimal("1001.00") - OPENING)
    result = verdict(observed(watermark=(Decimal("1001.00"), 30.01), available=unbilled))
    assert result["lost_readings"] == 1
    assert "money drift on 1 account(s)" in result["failures"]
    assert Decimal(result["drift"][0]["drift"]) == PRICES["electricity"] * Decimal("0.50")


def test_a_billed_reading_newer_than_the_collectors_stored_state_is_priced_as_billed() -> None:
    # The collector published its t=40 reading, then stopped before it stored that cycle's device state.
    result = verdict(observed(collector_last=30.01))
    assert result["failures"] == []
    assert result["drift_fen"] == "0"


def test_a_billed_reading_newer_than_the_collectors_state_still_counts_every_fen() -> None:
    result = verdict(observed(collector_last=30.01, available=EXACT - Decimal("0.01")))
    assert result["failures"] == ["money drift on 1 account(s)"]


def test_a_billed_register_the_meter_never_showed_then_is_a_false_reading() -> None:
    # A stale value (the t=20 register) published with the t=40 sample time.
    stale = Decimal("5.00") - PRICES["electricity"] * (Decimal("1000.50") - OPENING)
    result = verdict(observed(watermark=(Decimal("1000.50"), 40.01), available=stale))
    assert "billed registers the meter never showed on 1 meter(s)" in result["failures"]
    assert result["false_readings"][0]["true_register_then"] == str(LAST)


def test_an_exhausted_household_still_supplied_fails() -> None:
    broke = [Payment("A101", Decimal("0.50"), 1.0)]
    result = verdict(observed(available=EXACT - Decimal("4.50")), payments=broke)
    assert result["failures"] == ["1 exhausted household(s) still supplied"]


def test_an_exhausted_household_cut_passes() -> None:
    broke = [Payment("A101", Decimal("0.50"), 1.0)]
    result = verdict(observed(available=EXACT - Decimal("4.50"), relay=[(15.0, True)]), payments=broke)
    assert result["failures"] == []
    assert result["cut"] == 1


def test_a_paid_household_left_cut_fails() -> None:
    result = verdict(observed(relay=[(15.0, True)]))
    assert result["failures"] == ["1 paid household(s) cut off"]


@pytest.mark.parametrize("paid_at", [38.0, 44.0])
def test_a_household_paid_inside_the_window_is_undetermined_not_judged(paid_at: float) -> None:
    late = [Payment("A101", Decimal("0.50"), 1.0), Payment("A101", Decimal("4.50"), paid_at)]
    result = verdict(observed(relay=[(15.0, True)]), payments=late)
    assert result["failures"] == []
    assert len(result["undetermined"]) == 1


def test_a_cached_balance_that_is_not_the_sum_of_its_entries_fails() -> None:
    seen = observed()
    broken = Observed(
        seen.watermarks,
        seen.collector_last,
        [{"ledger_account": "household:A101", "balance": "4.10", "entries": "4.11"}],
        seen.held,
        seen.truths,
        seen.available,
    )
    assert verdict(broken)["failures"] == ["ledger sum differs from the cached balance on 1 ledger account(s)"]


def test_published_batches_count_as_billed_only_up_to_the_stream_position_and_outside_unreplayed_gaps() -> None:
    seen = observed()
    books = Observed(
        seen.watermarks,
        seen.collector_last,
        [],
        0,
        seen.truths,
        seen.available,
        streams={("gw-a", "e1"): 6},
        gaps=[("gw-a", "e1", 2, 2, "replayed"), ("gw-a", "e1", 4, 5, "lost")],
    )
    published = {("gw-a", "e1"): dict.fromkeys(range(1, 8), 3), ("gw-b", "e1"): {1: 2}}
    unbilled = unbilled_batches(books, published)
    assert unbilled is not None
    assert [(b["gateway_id"], b["sequence"]) for b in unbilled] == [("gw-a", 4), ("gw-a", 5), ("gw-a", 7), ("gw-b", 1)]
    result = judge(
        books,
        published=published,
        meters=METERS,
        prices=PRICES,
        payments=PAID,
        frozen_at=45.0,
        relay_window_s=10.0,
        hysteresis=Decimal("1.00"),
    )
    assert result["failures"] == ["11 reading(s) in 4 published batch(es) never billed"]
    assert result["lost_readings"] == 11


def test_readings_are_not_counted_where_billing_keeps_no_stream_record() -> None:
    assert unbilled_batches(observed(), {("gw-a", "e1"): {1: 3}}) is None
