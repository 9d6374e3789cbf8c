"""Re-pricing a closed period (调价追溯, pure): each household's exact difference, the fen posted rounded toward
zero, tier usage before the period counted but not corrected, time-of-use rates kept as measured."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.periods import CalendarPeriod
from shuidian_billing.domain.price_corrections import ChargedHour, reprice
from shuidian_billing.domain.tariffs import (
    FlatPrice,
    TariffVersion,
    TierBlock,
    Tiered,
    TimeOfUse,
    TouRate,
    TouSegment,
)
from shuidian_shared.messages import Utility

SINCE = datetime(2020, 1, 1, tzinfo=UTC)
NOV = datetime(2026, 10, 31, 16, tzinfo=UTC)  # 2026-11-01 00:00 in Shanghai
H = timedelta(hours=1)


def hour(
    account: str, at: datetime, quantity: str, amount: str, rates: dict[str, Decimal] | None = None
) -> ChargedHour:
    return ChargedHour(account, f"M-{account}", at, at, at + H, Decimal(quantity), Decimal(amount), 1, rates)


def flat(price: str) -> TariffVersion:
    return TariffVersion("x", Utility.WATER, SINCE, (FlatPrice(Decimal(price)),))


@pytest.mark.parametrize(
    ("new_price", "difference", "posted"),
    [
        ("3.00", Decimal("-4.000"), Decimal("-4.00")),  # cheaper: credited back
        ("3.401", Decimal("0.010"), Decimal("0.01")),
        ("3.4009", Decimal("0.0090"), Decimal("0.00")),  # under a fen: nothing posted
        ("3.3991", Decimal("-0.0090"), Decimal("0.00")),  # toward zero, not down
        ("3.3333", Decimal("-0.6670"), Decimal("-0.66")),
    ],
)
def test_a_flat_correction_posts_the_difference_rounded_toward_zero(
    new_price: str, difference: Decimal, posted: Decimal
) -> None:
    hours = [hour("A", NOV + i * H, "2.5", str(Decimal("2.5") * Decimal("3.40"))) for i in range(4)]
    found = reprice(hours, flat(new_price), NOV)
    assert found["A"].quantity == Decimal(10)
    assert found["A"].old_amount == Decimal("34.000")
    assert found["A"].difference == difference
    assert found["A"].posted == posted
    assert found["A"].hours == 4


def test_hours_before_the_period_count_towards_tiers_but_are_not_corrected() -> None:
    tiers = TariffVersion(
        "x",
        Utility.ELECTRICITY,
        SINCE,
        (
            Tiered(
                CalendarPeriod.MONTH,
                (TierBlock("一档", Decimal(100), Decimal("0.50")), TierBlock("二档", None, Decimal("0.80"))),
            ),
        ),
    )
    before = hour("A", NOV + 2 * H, "90", "54.00")  # 90 kWh at 0.60 before the corrected period
    inside = hour("A", NOV + 30 * H, "30", "18.00")  # 30 kWh at 0.60: 10 in 一档, 20 in 二档 once corrected
    other = hour("B", NOV + 30 * H, "30", "18.00")  # another household starts its month from zero
    found = reprice([inside, before, other], tiers, NOV + 24 * H)
    assert found["A"].new_amount == Decimal("10") * Decimal("0.50") + Decimal("20") * Decimal("0.80")
    assert found["A"].old_amount == Decimal("18.00")
    assert found["B"].new_amount == Decimal("15.00")
    assert found["A"].quantity == Decimal(30)


def test_time_of_use_hours_keep_their_measured_rates() -> None:
    tou = TariffVersion(
        "x",
        Utility.ELECTRICITY,
        SINCE,
        (
            TimeOfUse(
                (TouRate("峰", Decimal("0.70")), TouRate("谷", Decimal("0.30"))),
                (TouSegment(time(8), "峰"), TouSegment(time(22), "谷")),
            ),
        ),
    )
    # Measured by the meter's rate registers: 3 kWh peak and 1 off-peak in an hour at 03:00 (谷 by the clock).
    measured = hour("A", NOV + 3 * H, "4", "2.00", {"峰": Decimal(3), "谷": Decimal(1)})
    found = reprice([measured], tou, NOV)
    assert found["A"].new_amount == Decimal("3") * Decimal("0.70") + Decimal("0.30")
    # Without rate quantities the hour is split by the clock: all of it off-peak.
    by_clock = reprice([hour("A", NOV + 3 * H, "4", "2.00")], tou, NOV)
    assert by_clock["A"].new_amount == Decimal("1.20")


def test_the_correcting_version_covers_the_whole_period() -> None:
    late = TariffVersion("x", Utility.WATER, NOV + H, (FlatPrice(Decimal(1)),))
    with pytest.raises(BillingDomainError):
        reprice([hour("A", NOV, "1", "1")], late, NOV)
