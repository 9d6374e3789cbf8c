"""Tariff what-if: the same consumption priced under the tariff in force and under a proposed one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from shuidian_insights.domain.pricing import MonthProfile, Pricer, to_fen
from shuidian_insights.domain.stats import percentile
from shuidian_shared.contracts.insights import TariffSpec

ZERO = Decimal(0)
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True, slots=True)
class Household:
    account_id: str
    household_size: int
    months: tuple[MonthProfile, ...]


@dataclass(frozen=True, slots=True)
class HouseholdBill:
    account_id: str
    current: Decimal  # whole fen
    proposed: Decimal

    @property
    def change(self) -> Decimal:
        return self.proposed - self.current


@dataclass(frozen=True, slots=True)
class WhatIf:
    bills: tuple[HouseholdBill, ...]
    current_revenue: Decimal
    proposed_revenue: Decimal

    @property
    def revenue_change(self) -> Decimal:
        return self.proposed_revenue - self.current_revenue

    @property
    def revenue_change_pct(self) -> Decimal | None:
        if not self.current_revenue:
            return None
        return (self.revenue_change * 100 / self.current_revenue).quantize(Decimal("0.01"))

    def count(self, sign: int) -> int:
        return sum(1 for bill in self.bills if (bill.change > 0) - (bill.change < 0) == sign)

    def change_percentiles(self) -> dict[str, Decimal]:
        changes = sorted(bill.change for bill in self.bills)
        if not changes:
            return {}
        return {f"p{p}": percentile(changes, Decimal(p)).quantize(Decimal("0.01")) for p in PERCENTILES}

    def histogram(self, buckets: int = 10) -> list[tuple[Decimal, Decimal, int]]:
        """Equal-width buckets from the smallest to the largest change (one bucket when all are equal)."""
        changes = [bill.change for bill in self.bills]
        if not changes:
            return []
        low, high = min(changes), max(changes)
        if low == high:
            return [(low, high, len(changes))]
        width = (high - low) / buckets
        counts = [0] * buckets
        for change in changes:
            counts[min(buckets - 1, int((change - low) / width))] += 1
        return [(low + width * i, low + width * (i + 1), counts[i]) for i in range(buckets)]


def bill(tariff: TariffSpec | Pricer, household: Household) -> Decimal:
    """A household's bill over its months in whole fen (cut toward zero, as billing posts)."""
    pricer = tariff if isinstance(tariff, Pricer) else Pricer.of(tariff)
    return to_fen(pricer.months(household.months, household.household_size))


def what_if(current: TariffSpec, proposed: TariffSpec, households: Sequence[Household]) -> WhatIf:
    before, after = Pricer.of(current), Pricer.of(proposed)
    bills = tuple(HouseholdBill(h.account_id, bill(before, h), bill(after, h)) for h in households)
    return WhatIf(
        bills,
        current_revenue=sum((b.current for b in bills), ZERO),
        proposed_revenue=sum((b.proposed for b in bills), ZERO),
    )
