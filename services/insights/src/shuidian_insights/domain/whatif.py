"""Tariff what-if: the same consumption priced under the tariff in force and under a proposed one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    return summarise(HouseholdBill(h.account_id, bill(before, h), bill(after, h)) for h in households)


def summarise(bills: Iterable[HouseholdBill]) -> WhatIf:
    """The what-if over every household's bills before and after."""
    kept = tuple(bills)
    return WhatIf(
        kept,
        current_revenue=sum((b.current for b in kept), ZERO),
        proposed_revenue=sum((b.proposed for b in kept), ZERO),
    )


@dataclass(frozen=True, slots=True)
class PriceClasses:
    """The hours of the day grouped by the pair of prices two tariffs charge in them.

    Flat and time-of-use prices are linear in each hour's use, so a household-month is priced exactly from its
    use per class instead of per hour: flat against a two-rate time-of-use is 2 numbers, not 24. The reader sums
    each class's hours (in SQL) and the pricers below price those sums; tiers and fixed fees see the same month
    totals as before, so every bill is the same to the fen (the exact amounts are equal, not just close)."""

    hours: tuple[tuple[int, ...], ...]  # the hours of day (0..23) of each class
    before: Pricer
    after: Pricer

    @classmethod
    def of(cls, current: TariffSpec, proposed: TariffSpec) -> PriceClasses:
        full_before, full_after = Pricer.of(current), Pricer.of(proposed)
        classes: dict[tuple[Decimal, Decimal], list[int]] = {}
        for hour, pair in enumerate(zip(full_before.hourly, full_after.hourly, strict=True)):
            classes.setdefault(pair, []).append(hour)
        pairs = list(classes)
        return cls(
            tuple(tuple(hours) for hours in classes.values()),
            Pricer(tuple(b for b, _ in pairs), full_before.tiers, full_before.fixed),
            Pricer(tuple(a for _, a in pairs), full_after.tiers, full_after.fixed),
        )

    def reduce(self, profile: MonthProfile) -> MonthProfile:
        """A month per hour of day as a month per class (what the SQL reader returns directly)."""
        return MonthProfile(profile.month, tuple(sum((profile.by_hour[h] for h in hs), ZERO) for hs in self.hours))

    def bill(self, household: Household) -> HouseholdBill:
        """The household's bills before and after, its months given per class."""
        return HouseholdBill(household.account_id, bill(self.before, household), bill(self.after, household))
