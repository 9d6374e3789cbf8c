"""Pricing whole local hours under a tariff: exact amounts, the sufficient statistics the what-if needs.

Components add up as in billing (docs/billing.md): a flat price and time-of-use rates price every unit,
tiered blocks price the units of a local month (or year) by how much came before, and a fixed fee is due
once per month. Time-of-use segments start on the hour, so an hour's use belongs to one rate and a
household-month is described exactly by its use per local hour of day (`MonthProfile`): the price of
those 24 numbers equals the price of the 720-odd hours they came from. Amounts are exact; bills are cut
to whole fen toward zero (shuidian_shared.money), as billing posts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Context, Decimal, Inexact, localcontext
from functools import lru_cache
from operator import mul

from shuidian_shared.contracts.insights import (
    FixedComponent,
    FlatComponent,
    TariffSpec,
    TieredComponent,
    TouComponent,
)
from shuidian_shared.money import CENT

ZERO = Decimal(0)
HOURS = 24
# Quantity × price must stay exact, as in billing: any silent rounding would be an error.
EXACT = Context(prec=60, traps=[Inexact])


@dataclass(frozen=True, slots=True)
class MonthProfile:
    """One household's use in one local month, per local hour of day (0..23)."""

    month: str  # YYYY-MM
    by_hour: tuple[Decimal, ...]

    @property
    def total(self) -> Decimal:
        return sum(self.by_hour, ZERO)


@lru_cache(maxsize=256)  # tariffs are few; a what-if brings one more
def rate_by_hour(tou: TouComponent) -> tuple[str, ...]:
    """The rate label in force in each local hour of the day (the last segment runs past midnight)."""
    starts = sorted((segment.start.hour, segment.rate) for segment in tou.segments)
    labels = []
    for hour in range(HOURS):
        current = starts[-1][1]
        for start, rate in starts:
            if start <= hour:
                current = rate
        labels.append(current)
    return tuple(labels)


def tier_widths(tiered: TieredComponent, household_size: int) -> tuple[Decimal | None, ...]:
    extra_persons = max(0, household_size - (tiered.base_household_size or household_size))
    return tuple(
        None if block.width is None else block.width + block.extra_width_per_person * extra_persons
        for block in tiered.blocks
    )


def tier_split(tiered: TieredComponent, used_before: Decimal, quantity: Decimal, household_size: int) -> list[Decimal]:
    """How much of `quantity`, coming after `used_before` in the period, falls in each block."""
    parts = []
    lower = ZERO
    for width in tier_widths(tiered, household_size):
        upper = None if width is None else lower + width
        start = max(used_before, lower)
        end = used_before + quantity if upper is None else min(used_before + quantity, upper)
        parts.append(max(ZERO, end - start))
        if upper is not None:
            lower = upper
    return parts


@dataclass(frozen=True, slots=True)
class Pricer:
    """A tariff compiled once for pricing many household-months: flat and time-of-use prices add up to one
    price per local hour of day; tiers and fixed fees apply to the month as a whole."""

    hourly: tuple[Decimal, ...]
    tiers: tuple[TieredComponent, ...]
    fixed: Decimal

    @classmethod
    def of(cls, tariff: TariffSpec) -> Pricer:
        tiers = tuple(c for c in tariff.components if isinstance(c, TieredComponent))
        fixed = sum((c.amount_per_month for c in tariff.components if isinstance(c, FixedComponent)), ZERO)
        return cls(marginal_prices_by_hour(tariff), tiers, fixed)

    def month(self, profile: MonthProfile, household_size: int, used_before_in_year: Decimal = ZERO) -> Decimal:
        """The exact amount of one household-month (fixed fees included)."""
        with localcontext(EXACT):
            amount = sum(map(mul, profile.by_hour, self.hourly), self.fixed)
            if self.tiers:
                total = profile.total
                for tiered in self.tiers:
                    before = used_before_in_year if tiered.period == "year" else ZERO
                    parts = tier_split(tiered, before, total, household_size)
                    amount += sum(map(mul, parts, (b.unit_price for b in tiered.blocks)), ZERO)
            return amount

    def months(self, profiles: Sequence[MonthProfile], household_size: int) -> Decimal:
        """The exact amount of consecutive months (a yearly tier counts from each local January).

        The same sums as `month` for each month (exact arithmetic: the order of additions cannot change
        them), with the tier bounds of this household size worked out once: the what-if calls this for every
        household under two tariffs, so it is the pricing's hot loop."""
        bands = [(tiered.period == "year", tier_bands(tiered, household_size)) for tiered in self.tiers]
        amount = ZERO
        used_in_year = ZERO
        year = ""
        with localcontext(EXACT):
            for profile in sorted(profiles, key=lambda p: p.month):
                if profile.month[:4] != year:
                    year, used_in_year = profile.month[:4], ZERO
                amount += sum(map(mul, profile.by_hour, self.hourly), self.fixed)
                if bands:
                    total = sum(profile.by_hour, ZERO)
                    for yearly, blocks in bands:
                        before = used_in_year if yearly else ZERO
                        after = before + total
                        for lower, upper, price in blocks:
                            start = before if before > lower else lower
                            end = after if upper is None or after < upper else upper
                            if end > start:
                                amount += (end - start) * price
                    used_in_year += total
        return amount


def tier_bands(tiered: TieredComponent, household_size: int) -> tuple[tuple[Decimal, Decimal | None, Decimal], ...]:
    """Each block's (lower, upper, unit price) for a household of `household_size` (upper None: open)."""
    bands = []
    lower = ZERO
    for width, block in zip(tier_widths(tiered, household_size), tiered.blocks, strict=True):
        upper = None if width is None else lower + width
        bands.append((lower, upper, block.unit_price))
        if upper is not None:
            lower = upper
    return tuple(bands)


def price_month(
    tariff: TariffSpec, profile: MonthProfile, household_size: int, used_before_in_year: Decimal = ZERO
) -> Decimal:
    """The exact amount of one household-month under `tariff` (fixed fees included)."""
    return Pricer.of(tariff).month(profile, household_size, used_before_in_year)


def price_months(tariff: TariffSpec, profiles: Sequence[MonthProfile], household_size: int) -> Decimal:
    """The exact amount of consecutive months under `tariff`."""
    return Pricer.of(tariff).months(profiles, household_size)


def to_fen(amount: Decimal) -> Decimal:
    """Whole fen toward zero: what billing posts of an exact amount."""
    return amount.quantize(CENT, rounding=ROUND_DOWN)


@lru_cache(maxsize=256)  # tariffs are few; a what-if brings one more
def marginal_prices_by_hour(tariff: TariffSpec) -> tuple[Decimal, ...]:
    """Per-unit price in each local hour before tiers (flat plus the hour's time-of-use rate)."""
    prices = [ZERO] * HOURS
    for component in tariff.components:
        if isinstance(component, FlatComponent):
            prices = [p + component.unit_price for p in prices]
        elif isinstance(component, TouComponent):
            by_label = {rate.label: rate.unit_price for rate in component.rates}
            prices = [p + by_label[label] for p, label in zip(prices, rate_by_hour(component), strict=True)]
    return tuple(prices)


def first_tou(tariff: TariffSpec) -> TouComponent | None:
    return next((c for c in tariff.components if isinstance(c, TouComponent)), None)


def first_tiered(tariff: TariffSpec) -> TieredComponent | None:
    return next((c for c in tariff.components if isinstance(c, TieredComponent)), None)
