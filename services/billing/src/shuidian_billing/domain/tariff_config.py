"""Tariff versions as stored and sent over REST (JSON components), turned into the pure domain's
`TariffVersion`s, and the `Pricer` the reading path uses to price an interval.

A component is one of:
  {"kind": "flat", "unit_price": "0.60"}
  {"kind": "tou", "rates": [{"label": "峰", "unit_price": "0.80", "register_name": "energy_tariff_2"}, …],
   "segments": [{"start": "08:00", "rate": "峰"}, …]}                       (≤ 14 daily segments)
  {"kind": "tiered", "period": "month" | "year", "base_household_size": 3,
   "blocks": [{"label": "一档", "width": "180", "unit_price": "0.56", "extra_width_per_person": "30"}, …,
              {"label": "三档", "width": null, "unit_price": "0.86"}]}
  {"kind": "fixed", "amount_per_month": "5.00"}                           (posted by the monthly run)
Components add up (e.g. a water tier price plus a flat sewage fee); each has a unique `name`.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Context, Decimal, Inexact
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shuidian_billing.domain import BillingDomainError, tariffs
from shuidian_billing.domain.meters import Owner
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME, CalendarPeriod, period_end, period_start
from shuidian_shared.messages import Utility
from shuidian_shared.money import Money, Quantity

# Quantity × price must stay exact, as in the domain: any silent rounding would be an error.
_EXACT = Context(prec=60, traps=[Inexact])

Price = Annotated[Quantity, Field(description="CNY per kWh or m³, up to six decimals")]


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlatIn(_Component):
    kind: Literal["flat"] = "flat"
    name: str = Field(default="flat", min_length=1, max_length=40)
    unit_price: Price


class TouRateIn(_Component):
    label: str = Field(min_length=1, max_length=20)
    unit_price: Price
    register_name: str | None = Field(
        default=None, max_length=64, description="the meter's own cumulative register for this rate, if it has one"
    )


class TouSegmentIn(_Component):
    start: time
    rate: str


class TouIn(_Component):
    kind: Literal["tou"] = "tou"
    name: str = Field(default="tou", min_length=1, max_length=40)
    rates: tuple[TouRateIn, ...] = Field(min_length=1)
    segments: tuple[TouSegmentIn, ...] = Field(min_length=1, max_length=tariffs.MAX_TOU_SEGMENTS)


class TierBlockIn(_Component):
    label: str = Field(min_length=1, max_length=20)
    width: Quantity | None
    unit_price: Price
    extra_width_per_person: Quantity = Decimal(0)


class TieredIn(_Component):
    kind: Literal["tiered"] = "tiered"
    name: str = Field(default="tiered", min_length=1, max_length=40)
    period: CalendarPeriod = CalendarPeriod.MONTH
    base_household_size: int | None = Field(default=None, ge=1)
    blocks: tuple[TierBlockIn, ...] = Field(min_length=1)


class FixedIn(_Component):
    kind: Literal["fixed"] = "fixed"
    name: str = Field(default="service_fee", min_length=1, max_length=40)
    amount_per_month: Money


ComponentIn = Annotated[FlatIn | TouIn | TieredIn | FixedIn, Field(discriminator="kind")]
COMPONENTS = TypeAdapter(tuple[ComponentIn, ...])


def to_domain(
    tariff_id: int, utility: Utility, effective_from: datetime, components: Sequence[ComponentIn]
) -> tariffs.TariffVersion:
    """The pure domain version (raises BillingDomainError when the components are inconsistent)."""
    out: list[tariffs.Component] = []
    for c in components:
        match c:
            case FlatIn():
                out.append(tariffs.FlatPrice(c.unit_price, c.name))
            case TouIn():
                out.append(
                    tariffs.TimeOfUse(
                        tuple(tariffs.TouRate(r.label, r.unit_price) for r in c.rates),
                        tuple(tariffs.TouSegment(s.start, s.rate) for s in c.segments),
                        c.name,
                    )
                )
            case TieredIn():
                out.append(
                    tariffs.Tiered(
                        c.period,
                        tuple(
                            tariffs.TierBlock(b.label, b.width, b.unit_price, b.extra_width_per_person)
                            for b in c.blocks
                        ),
                        c.base_household_size,
                        c.name,
                    )
                )
            case FixedIn():
                out.append(tariffs.FixedCharge(c.amount_per_month, c.name))
    return tariffs.TariffVersion(str(tariff_id), utility, effective_from, tuple(out))


@dataclass(frozen=True)
class StoredVersion:
    """A tariff version as loaded from the database, with its domain form.

    A stored version never changes (ids are not reused), so what is derived from it is computed once.
    """

    tariff_id: int
    components: tuple[ComponentIn, ...]
    domain: tariffs.TariffVersion

    @cached_property
    def tier_period(self) -> CalendarPeriod | None:
        return next((c.period for c in self.components if isinstance(c, TieredIn)), None)

    @cached_property
    def tier_name(self) -> str | None:
        return next((c.name for c in self.components if isinstance(c, TieredIn)), None)

    @cached_property
    def rate_registers(self) -> dict[str, str]:
        """Rate label by register name, when every rate of the time-of-use component has a register."""
        tou = next((c for c in self.components if isinstance(c, TouIn)), None)
        if tou is None or any(r.register_name is None for r in tou.rates):
            return {}
        return {str(r.register_name): r.label for r in tou.rates}

    @cached_property
    def flat_only(self) -> tuple[tariffs.FlatPrice, ...] | None:
        parts = self.domain.components
        usage = [c for c in parts if not isinstance(c, tariffs.FixedCharge)]
        if all(isinstance(c, tariffs.FlatPrice) for c in usage):
            return tuple(c for c in usage if isinstance(c, tariffs.FlatPrice))
        return None


class Pricer:
    """Prices intervals of one utility against its versions; a fast path for flat single-piece intervals.

    The fast path gives exactly what `tariffs.price_interval` gives for an interval that lies in one
    version and one local month under flat prices only; everything else goes to the domain.
    """

    def __init__(self, utility: Utility, versions: Sequence[StoredVersion]) -> None:
        self.utility = utility
        self.versions = sorted(versions, key=lambda v: v.domain.effective_from)
        self._froms = [v.domain.effective_from for v in self.versions]
        self._domain = [v.domain for v in self.versions]
        self._flat = [v.flat_only for v in self.versions]
        self._month = (datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC))

    def _same_month(self, start: datetime, end: datetime) -> bool:
        # Most intervals fall in the month of the one before: remember its bounds.
        low, high = self._month
        if not low <= start < high:
            low = period_start(CalendarPeriod.MONTH, start, CHINA_STANDARD_TIME)
            high = period_end(CalendarPeriod.MONTH, start, CHINA_STANDARD_TIME)
            self._month = (low, high)
        return end < high

    def version_at(self, at: datetime) -> StoredVersion | None:
        index = bisect.bisect_right(self._froms, at) - 1
        return self.versions[index] if index >= 0 else None

    def price(
        self,
        quantity: Decimal,
        start: datetime,
        end: datetime,
        usage_before: Decimal,
        household_size: int,
        segment_quantities: Mapping[str, Decimal] | None,
    ) -> tariffs.PricedConsumption:
        first = bisect.bisect_right(self._froms, start) - 1
        last = bisect.bisect_right(self._froms, end) - 1
        if first >= 0 and first == last and segment_quantities is None:
            flats = self._flat[first]
            if flats is not None and (start == end or self._same_month(start, end)):
                lines = tuple(
                    tariffs.ChargeLine(
                        f.name, f.name, quantity, f.unit_price, _EXACT.multiply(quantity, f.unit_price), start, end
                    )
                    for f in flats
                    if quantity
                )
                return tariffs.PricedConsumption(self.utility, quantity, start, end, lines, usage_before + quantity)
        return tariffs.price_interval(
            self._domain,
            self.utility,
            quantity,
            start,
            end,
            usage_before,
            household_size,
            segment_quantities=segment_quantities,
        )


def tier_key(period: CalendarPeriod, at: datetime) -> tuple[str, datetime]:
    """The (period kind, UTC start of the local period) tier usage is counted under."""
    return period.value, period_start(period, at, CHINA_STANDARD_TIME)


# --- tariff plans: which versions price a meter -----------------------------------------------------

DEFAULT_PLAN = "default"


class CustomerClass(StrEnum):
    """Who consumes: 居民 households, 非居民 shops and offices, 公共 common areas."""

    RESIDENTIAL = "residential"
    NON_RESIDENTIAL = "non_residential"
    COMMON = "common"


CLASS_NAMES_ZH = {
    CustomerClass.RESIDENTIAL: "居民",
    CustomerClass.NON_RESIDENTIAL: "非居民",
    CustomerClass.COMMON: "公共",
}


@dataclass(frozen=True, slots=True)
class PlanScope:
    """Where a plan applies: an estate (optionally one building of it) and/or a customer class; None = any."""

    plan_id: str
    estate_id: str | None = None
    building_id: str | None = None
    customer_class: CustomerClass | None = None

    def __post_init__(self) -> None:
        if self.building_id is not None and self.estate_id is None:
            raise BillingDomainError("a plan scoped to a building names its estate too")

    @property
    def rank(self) -> tuple[bool, bool, bool]:
        """Specificity: estate before building before class (see `candidate_plans`)."""
        return (self.estate_id is not None, self.building_id is not None, self.customer_class is not None)

    def covers(self, context: PlanContext) -> bool:
        return (
            (self.estate_id is None or self.estate_id == context.estate_id)
            and (self.building_id is None or self.building_id == context.building_id)
            and (self.customer_class is None or self.customer_class == context.customer_class)
        )

    def reason(self) -> tuple[str, str]:
        """Why a meter priced under this plan was: (zh-CN, English)."""
        zh: list[str] = []
        en: list[str] = []
        if self.estate_id is not None:
            zh.append(f"小区 {self.estate_id}")
            en.append(f"estate {self.estate_id}")
        if self.building_id is not None:
            zh.append(f"楼栋 {self.building_id}")
            en.append(f"building {self.building_id}")
        if self.customer_class is not None:
            zh.append(f"{CLASS_NAMES_ZH[self.customer_class]}用户")
            en.append(f"class {self.customer_class.value}")
        if not zh:
            return (
                "没有更具体的价格方案覆盖该表，按默认方案计价",
                "no more specific plan covers this meter, so the default plan applies",
            )
        return (
            "该表属于" + "、".join(zh) + "，这是覆盖它的最具体的价格方案",
            "the meter is in " + ", ".join(en) + ", and this is the most specific plan covering it",
        )


class PlanContext(NamedTuple):
    """What decides a meter's plan over an owner period: its estate, building and customer class.

    A tuple of plain strings (the class by its value): it keys the plan cache on every billed reading,
    and an enum member's hash runs Python code."""

    estate_id: str | None
    building_id: str | None
    customer_class: str


def candidate_plans(plans: Sequence[PlanScope], context: PlanContext) -> list[PlanScope]:
    """The plans covering `context`, most specific first.

    Resolution order (the first plan with a version of the utility in force wins):
      1. estate + building + class   2. estate + building   3. estate + class   4. estate
      5. class (any estate)          6. the default plan (no scope)
    """
    return sorted((p for p in plans if p.covers(context)), key=lambda p: p.rank, reverse=True)


def check_plan_components(scope: PlanScope, components: Sequence[ComponentIn]) -> None:
    """Non-residential users pay no tiers (阶梯电价/水价 apply to households only)."""
    if scope.customer_class is CustomerClass.NON_RESIDENTIAL and any(isinstance(c, TieredIn) for c in components):
        raise BillingDomainError("a non-residential (非居民) plan has no tiers: use flat or time-of-use prices")


@dataclass(frozen=True)
class PlannedOwner(Owner):
    """An owner period with what decides its plan (None: the default plan)."""

    context: PlanContext | None = None


@dataclass(frozen=True, slots=True)
class PlanChoice:
    """The plan (and its pricer) that prices one owner period of a meter."""

    scope: PlanScope
    pricer: Pricer


class PlanPricer:
    """Every plan's pricer for one utility, and the choice of plan per meter context, remembered per context.

    Built once per change of the tariff table (the charger keeps it by stamp), so resolving a reading's plan
    is a dictionary look-up and a bisect: no query per reading.
    """

    def __init__(self, utility: Utility, plans: Sequence[PlanScope], pricers: Mapping[str, Pricer]) -> None:
        self.utility = utility
        self.plans = {p.plan_id: p for p in plans}
        self.pricers = dict(pricers)
        self._candidates: dict[PlanContext | None, list[PlanChoice]] = {}
        # Whether any version of any plan splits by the meter's own rate registers (else the charger skips that step).
        self.rate_registers = any(v.rate_registers for p in self.pricers.values() for v in p.versions)

    @property
    def default(self) -> Pricer:
        return self.pricers.get(DEFAULT_PLAN) or Pricer(self.utility, ())

    @property
    def versions(self) -> list[StoredVersion]:
        """The default plan's versions (what `/v1/tariffs/{utility}` shows)."""
        return self.default.versions

    def choices(self, context: PlanContext | None) -> list[PlanChoice]:
        found = self._candidates.get(context)
        if found is None:
            if context is None:
                scopes = [self.plans.get(DEFAULT_PLAN, PlanScope(DEFAULT_PLAN))]
            else:
                scopes = candidate_plans(list(self.plans.values()), context)
            found = [PlanChoice(s, self.pricers[s.plan_id]) for s in scopes if s.plan_id in self.pricers]
            self._candidates[context] = found
        return found

    def choose(self, context: PlanContext | None, at: datetime) -> PlanChoice | None:
        """The most specific plan covering `context` with a version in force at `at` (None: none has)."""
        for choice in self.choices(context):
            if choice.pricer.version_at(at) is not None:
                return choice
        return None

    def fee_versions(self, context: PlanContext | None, month_start: datetime) -> list[StoredVersion]:
        """The versions whose fixed fees a household pays for a month: its plan's at the month's first instant."""
        choice = self.choose(context, month_start)
        return choice.pricer.versions if choice is not None else self.versions
