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

from shuidian_shared.contracts.insights import (
    FixedComponent,
    FlatComponent,
    SharedComponent,
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


def price_month(
    tariff: TariffSpec, profile: MonthProfile, household_size: int, used_before_in_year: Decimal = ZERO
) -> Decimal:
    """The exact amount of one household-month under `tariff` (fixed fees included)."""
    with localcontext(EXACT):
        return _price_month(tariff, profile, household_size, used_before_in_year)


def _price_month(
    tariff: TariffSpec, profile: MonthProfile, household_size: int, used_before_in_year: Decimal
) -> Decimal:
    # Flat and time-of-use prices add up per hour of day: one price per hour prices both exactly.
    amount = sum((q * p for q, p in zip(profile.by_hour, marginal_prices_by_hour(tariff), strict=True)), ZERO)
    total = profile.total
    for component in tariff.components:
        match component:
            case FlatComponent() | TouComponent():
                pass  # in the hourly prices above
            case TieredComponent():
                before = used_before_in_year if component.period == "year" else ZERO
                parts = tier_split(component, before, total, household_size)
                amount += sum((q * b.unit_price for q, b in zip(parts, component.blocks, strict=True)), ZERO)
            case FixedComponent():
                amount += component.amount_per_month
            case SharedComponent():
                pass
    return amount


def price_months(tariff: TariffSpec, profiles: Sequence[MonthProfile], household_size: int) -> Decimal:
    """The exact amount of consecutive months (a yearly tier counts from each local January)."""
    amount = ZERO
    used_in_year = ZERO
    year = ""
    for profile in sorted(profiles, key=lambda p: p.month):
        if profile.month[:4] != year:
            year, used_in_year = profile.month[:4], ZERO
        amount += price_month(tariff, profile, household_size, used_in_year)
        used_in_year += profile.total
    return amount


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
