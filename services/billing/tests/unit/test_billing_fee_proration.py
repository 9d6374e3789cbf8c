"""Fixed monthly fees pro-rated by leased days: month boundaries, February, leap years, move-in and
out in the same month, and two households of one room summing to the whole fee under the ledger's
rounding rule (whole fen toward zero, remainder carried)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from shuidian_billing.domain.fees import days_in_month, leased_days, prorate_fee, shared_area_weights
from shuidian_billing.domain.tariffs import SharedBasis, allocate_shared_cost

D = Decimal


@pytest.mark.parametrize(
    ("move_in", "move_out", "year", "month", "days"),
    [
        (date(2026, 1, 1), None, 2026, 1, 31),  # a whole month
        (date(2025, 12, 31), None, 2026, 1, 31),  # leased before the month
        (date(2026, 1, 20), None, 2026, 1, 12),  # in on the 20th of 31 days: 20…31
        (date(2026, 1, 31), None, 2026, 1, 1),  # in on the last day
        (date(2026, 2, 1), None, 2026, 1, 0),  # in the next month
        (date(2025, 1, 1), date(2026, 1, 1), 2026, 1, 0),  # out on the month's first day: no day of it
        (date(2025, 1, 1), date(2026, 1, 2), 2026, 1, 1),  # out on the 2nd: the 1st only
        (date(2025, 1, 1), date(2026, 1, 16), 2026, 1, 15),  # out mid-month
        (date(2025, 1, 1), date(2026, 2, 1), 2026, 1, 31),  # out on the next month's first day: whole month
        (date(2026, 1, 10), date(2026, 1, 20), 2026, 1, 10),  # in and out in the same month
        (date(2026, 2, 1), None, 2026, 2, 28),  # February
        (date(2028, 2, 1), None, 2028, 2, 29),  # February of a leap year
        (date(2028, 2, 15), date(2028, 3, 1), 2028, 2, 15),  # 15…29 of a leap February
        (date(2100, 2, 1), None, 2100, 2, 28),  # 2100 is not a leap year
        (date(2026, 12, 25), None, 2026, 12, 7),  # December: the following month is next year's January
        (date(2026, 12, 25), date(2027, 1, 3), 2027, 1, 2),
    ],
)
def test_leased_days(move_in: date, move_out: date | None, year: int, month: int, days: int) -> None:
    assert leased_days(move_in, move_out, year, month) == days


@pytest.mark.parametrize(
    ("year", "month", "days"), [(2026, 1, 31), (2026, 2, 28), (2028, 2, 29), (2000, 2, 29), (2026, 4, 30)]
)
def test_days_in_month(year: int, month: int, days: int) -> None:
    assert days_in_month(year, month) == days


@pytest.mark.parametrize(
    ("fee", "days", "month_days", "carried", "share", "posted", "remainder"),
    [
        (D("31.00"), 12, 31, D(0), D("12.0000000000"), D("12.00"), D(0)),  # in on the 20th: 12/31
        (D("5.00"), 12, 31, D(0), D("1.9354838710"), D("1.93"), D("0.0054838710")),
        (D("5.00"), 19, 31, D(0), D("3.0645161290"), D("3.06"), D("0.0045161290")),
        (D("5.00"), 31, 31, D(0), D("5.0000000000"), D("5.00"), D(0)),  # a whole month is the fee
        (D("5.00"), 31, 31, D("0.0054838710"), D("5.0000000000"), D("5.00"), D("0.0054838710")),
        (D("10.00"), 14, 28, D(0), D("5.0000000000"), D("5.00"), D(0)),  # February
        (D("10.00"), 14, 29, D(0), D("4.8275862069"), D("4.82"), D("0.0075862069")),  # leap February
        # A carried remainder tips a later fee over a fen.
        (D("10.00"), 14, 29, D("0.0075862069"), D("4.8275862069"), D("4.83"), D("0.0051724138")),
        (D("0.10"), 1, 31, D(0), D("0.0032258065"), D("0.00"), D("0.0032258065")),  # under a fen: only carried
        (D("5.00"), 0, 30, D(0), D("0E-10"), D("0.00"), D(0)),
    ],
)
def test_prorate_fee_cuts_toward_zero_and_carries(
    fee: Decimal,
    days: int,
    month_days: int,
    carried: Decimal,
    share: Decimal,
    posted: Decimal,
    remainder: Decimal,
) -> None:
    result = prorate_fee(fee, days, month_days, carried)
    assert (result.share, result.posted, result.remainder) == (share, posted, remainder)
    assert result.posted + result.remainder == result.share + carried  # nothing lost or invented
    assert result.posted == result.posted.quantize(D("0.01"))
    assert 0 <= result.remainder < D("0.01")


@pytest.mark.parametrize(
    ("year", "month", "fee"),
    [(2026, 1, D("5.00")), (2026, 2, D("7.77")), (2028, 2, D("10.00")), (2026, 4, D("0.31")), (2026, 12, D("123.45"))],
)
def test_two_households_of_one_room_sum_to_the_fee_within_a_fen(year: int, month: int, fee: Decimal) -> None:
    month_days = days_in_month(year, month)
    for split in range(1, month_days):  # the first household leaves on day split+1, the next moves in then
        move = date(year, month, split + 1)
        first = leased_days(date(year - 1, 1, 1), move, year, month)
        second = leased_days(move, None, year, month)
        assert first + second == month_days
        a, b = prorate_fee(fee, first, month_days), prorate_fee(fee, second, month_days)
        # The shares add up to the fee (to the 10th decimal); each posting cuts < 1 fen toward zero.
        assert abs(a.share + b.share - fee) <= D("0.0000000001")
        assert a.posted + b.posted in (fee, fee - D("0.01"))
        assert a.posted + b.posted + a.remainder + b.remainder == a.share + b.share


@pytest.mark.parametrize(("days", "month_days"), [(-1, 31), (32, 31), (29, 28), (1, 27), (1, 32)])
def test_prorate_fee_refuses_impossible_days(days: int, month_days: int) -> None:
    with pytest.raises(ValueError, match="leased days"):
        prorate_fee(D("5.00"), days, month_days)


def test_shared_area_weights_follow_area_and_leased_days() -> None:
    june = [
        ("short", D("40.00"), date(2024, 6, 1), date(2024, 6, 3)),  # 2 days
        ("whole", D("40.00"), date(2024, 5, 1), None),  # 30 days
        ("first", D("60.00"), date(2024, 1, 1), date(2024, 6, 16)),  # one room, two households: 15 days …
        ("second", D("60.00"), date(2024, 6, 16), None),  # … and 15 days
        ("gone", D("40.00"), date(2024, 1, 1), date(2024, 6, 1)),  # no day of June
        ("moved", D("20.00"), date(2024, 6, 1), date(2024, 6, 11)),  # one account, two rooms: 10 days here …
        ("moved", D("30.00"), date(2024, 6, 11), None),  # … 20 days there
    ]
    assert shared_area_weights(june, SharedBasis.AREA, 2024, 6) == {
        "short": D(80),
        "whole": D(1200),
        "first": D(900),
        "second": D(900),
        "moved": D(800),
    }
    assert shared_area_weights(june, SharedBasis.EQUAL, 2024, 6) == {
        "short": 2,
        "whole": 30,
        "first": 15,
        "second": 15,
        "moved": 30,
    }
    # The whole room's area over the month, never counted twice for its two households.
    parts = allocate_shared_cost(D("100.00"), shared_area_weights(june, SharedBasis.AREA, 2024, 6), SharedBasis.AREA)
    # 10000 fen × 80, 1200, 900, 900, 800 of 3880; the 3 fen left go to the largest remainders.
    assert parts == {
        "short": D("2.06"),
        "whole": D("30.93"),
        "first": D("23.20"),
        "second": D("23.19"),
        "moved": D("20.62"),
    }
