"""Effective-dated tariffs and exact interval pricing: flat, time-of-use, tiered (阶梯), fixed fee, 公摊.

Pricing rules. Amounts are exact products (never rounded here); rounding to whole fen happens
only at posting (see `shuidian_shared.money`).

- A version applies from its `effective_from` onward; an earlier instant is always priced by
  the version that was in force then, so a new version never re-prices the past.
- An interval is cut into pieces at version changes and at local month starts. A meter says
  how much was used between two readings, not when, so the quantity is apportioned to pieces
  pro rata by time (`periods.apportion`: exact sum, parts cut at 1e-6 units).
- Components are additive: every usage component of a piece's version prices the piece's
  whole quantity and adds its own lines — e.g. time-of-use base prices plus a tier markup, or a
  water tier price plus a flat sewage fee.
- Time-of-use: with tariff registers, the caller passes each rate's measured delta
  (`segment_quantities`) and each is priced at its own rate. Without them the quantity is
  apportioned to rates pro rata by the time each rate was in force during the piece.
- Tiered: blocks per local month or year. `usage_before_in_period` is the usage already counted
  in the period containing `interval_start`; a piece in a later period starts again from zero.
  Block widths grow by `extra_width_per_person` for each person above `base_household_size`.
- Fixed charges and 公摊 are not per-unit prices: `fixed_charge_lines` and `allocate_shared_cost`.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from decimal import Context, Decimal, Inexact
from enum import StrEnum
from fractions import Fraction
from itertools import pairwise

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.periods import (
    CHINA_STANDARD_TIME,
    CalendarPeriod,
    apportion,
    as_utc,
    microseconds,
    month_starts_between,
    period_end,
    period_start,
)
from shuidian_shared.messages import Utility
from shuidian_shared.money import CENT, Quantity, to_money

MAX_TOU_SEGMENTS = 14
ZERO = Decimal(0)

# Quantity × price must stay exact; trapping Inexact turns any silent rounding into an error.
_EXACT = Context(prec=60, traps=[Inexact])


class NoTariffInEffect(BillingDomainError):
    """No tariff version for the utility was in force at the instant being priced."""


class SharedBasis(StrEnum):
    """How a common meter's cost (公摊) is shared among households."""

    AREA = "area"
    EQUAL = "equal"


@dataclass(frozen=True, slots=True)
class FlatPrice:
    """One price per unit for all consumption."""

    unit_price: Decimal
    name: str = "flat"


@dataclass(frozen=True, slots=True)
class TouRate:
    """A time-of-use rate (e.g. 尖, 峰, 平, 谷) and its price per unit."""

    label: str
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class TouSegment:
    """A daily segment starting at local wall time `start` and running to the next segment's start."""

    start: time
    rate: str


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """Daily time-of-use schedule: up to 14 segments covering the day, the last one past midnight.

    Segments are listed by ascending start; each runs until the next one starts and the last
    runs through midnight to the first one's start (e.g. 谷 23:00 → 07:00), so the day is always
    covered exactly once.
    """

    rates: tuple[TouRate, ...]
    segments: tuple[TouSegment, ...]
    name: str = "tou"

    def __post_init__(self) -> None:
        if not 1 <= len(self.segments) <= MAX_TOU_SEGMENTS:
            raise BillingDomainError(f"time-of-use needs 1..{MAX_TOU_SEGMENTS} segments")
        labels = [rate.label for rate in self.rates]
        if len(set(labels)) != len(labels):
            raise BillingDomainError("time-of-use rate labels must be unique")
        starts = [segment.start for segment in self.segments]
        if any(start.tzinfo is not None for start in starts):
            raise BillingDomainError("segment starts are local wall times without tzinfo")
        if any(later <= earlier for earlier, later in pairwise(starts)):
            raise BillingDomainError("segment starts must be strictly increasing")
        if any(segment.rate not in labels for segment in self.segments):
            raise BillingDomainError("every segment must name a defined rate")

    def price_of(self, label: str) -> Decimal:
        """The unit price of rate `label`."""
        for rate in self.rates:
            if rate.label == label:
                return rate.unit_price
        raise BillingDomainError(f"time-of-use component {self.name!r} has no rate {label!r}")

    def rate_at(self, instant: datetime, tz: tzinfo = CHINA_STANDARD_TIME) -> str:
        """The rate label in force at `instant` (local wall time decides)."""
        wall = as_utc(instant).astimezone(tz).time().replace(tzinfo=None)
        current = self.segments[-1].rate  # before the first start we are still in last night's segment
        for segment in self.segments:
            if segment.start <= wall:
                current = segment.rate
        return current


@dataclass(frozen=True, slots=True)
class TierBlock:
    """One tier: its base width (None for the open last tier) and its price per unit."""

    label: str
    width: Decimal | None
    unit_price: Decimal
    extra_width_per_person: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Tiered:
    """Tiered (阶梯) blocks whose usage accumulates over a local month or year."""

    period: CalendarPeriod
    blocks: tuple[TierBlock, ...]
    base_household_size: int | None = None
    name: str = "tiered"

    def __post_init__(self) -> None:
        if not self.blocks:
            raise BillingDomainError("tiered pricing needs at least one block")
        if self.blocks[-1].width is not None:
            raise BillingDomainError("the last tier must be open-ended (width None)")
        for block in self.blocks[:-1]:
            if block.width is None or block.width <= 0:
                raise BillingDomainError("every tier but the last needs a positive width")
        if any(block.extra_width_per_person < 0 for block in self.blocks):
            raise BillingDomainError("extra width per person cannot be negative")
        scaled = any(block.extra_width_per_person != 0 for block in self.blocks)
        if scaled and (self.base_household_size is None or self.base_household_size < 1):
            raise BillingDomainError("widths scaled by household size need a base_household_size ≥ 1")

    def widths(self, household_size: int) -> tuple[Decimal | None, ...]:
        """Block widths for a household of `household_size` persons."""
        extra_persons = max(0, household_size - (self.base_household_size or household_size))
        return tuple(
            None if block.width is None else block.width + block.extra_width_per_person * extra_persons
            for block in self.blocks
        )


@dataclass(frozen=True, slots=True)
class FixedCharge:
    """A fixed service fee per local calendar month, in whole fen."""

    amount_per_month: Decimal
    name: str = "service_fee"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "amount_per_month", to_money(self.amount_per_month))
        except ValueError as err:
            raise BillingDomainError(f"fixed charge: {err}") from err
        if self.amount_per_month < 0:
            raise BillingDomainError("a fixed charge cannot be negative")


@dataclass(frozen=True, slots=True)
class SharedAreaAllocation:
    """Marks a common meter whose cost is shared (公摊) among households on `basis`."""

    basis: SharedBasis
    name: str = "shared_area"


Component = FlatPrice | TimeOfUse | Tiered | FixedCharge | SharedAreaAllocation


@dataclass(frozen=True, slots=True)
class TariffVersion:
    """The components of one tariff for one utility, in force from `effective_from` on."""

    tariff_id: str
    utility: Utility
    effective_from: datetime
    components: tuple[Component, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "effective_from", as_utc(self.effective_from))
        names = [component.name for component in self.components]
        if len(set(names)) != len(names):
            raise BillingDomainError("component names must be unique within a tariff version")


# ChargeLine and PricedConsumption are built for every interval priced: slotted but not frozen,
# because a frozen dataclass costs about five times as much to build. Treat them as immutable.


@dataclass(slots=True)
class ChargeLine:
    """One line of a bill's explanation: what was priced, how much, at what price, over when."""

    component: str
    label: str
    quantity: Quantity
    unit_price: Decimal
    amount: Quantity
    start: datetime
    end: datetime


@dataclass(slots=True)
class PricedConsumption:
    """The exact (unrounded) price of one interval's quantity, line by line.

    `usage_in_period_after` is the usage in the tier period (of the tiered component in force at
    the interval's last piece, else the local month) that contains that piece, including this
    interval: the caller's next `usage_before_in_period` while the period lasts.
    """

    utility: Utility
    quantity: Quantity
    start: datetime
    end: datetime
    lines: tuple[ChargeLine, ...]
    usage_in_period_after: Quantity

    @property
    def total(self) -> Decimal:
        """Exact sum of the line amounts."""
        return sum((line.amount for line in self.lines), ZERO)


@dataclass(frozen=True, slots=True)
class _Piece:
    start: datetime
    end: datetime
    version: TariffVersion


def version_at(tariff_versions: Sequence[TariffVersion], utility: Utility, at: datetime) -> TariffVersion:
    """The version of `utility` in force at `at`."""
    versions = _sorted_versions(tariff_versions, utility)
    return _version_at(versions, [version.effective_from for version in versions], as_utc(at))


def price_interval(
    tariff_versions: Sequence[TariffVersion],
    utility: Utility,
    quantity: Decimal,
    interval_start: datetime,
    interval_end: datetime,
    usage_before_in_period: Decimal,
    household_size: int,
    tz: tzinfo = CHINA_STANDARD_TIME,
    *,
    segment_quantities: Mapping[str, Decimal] | None = None,
) -> PricedConsumption:
    """Price `quantity` consumed over [interval_start, interval_end] exactly, line by line.

    `segment_quantities` (rate label → measured delta) is given when the meter has tariff
    registers; it must sum exactly to `quantity`. An empty interval prices everything at its instant.
    """
    start, end = as_utc(interval_start), as_utc(interval_end)
    if end < start:
        raise BillingDomainError("interval ends before it starts")
    if quantity < 0:
        raise BillingDomainError("consumption cannot be negative")
    if usage_before_in_period < 0:
        raise BillingDomainError("usage before the interval cannot be negative")
    if household_size < 1:
        raise BillingDomainError("household size must be at least 1")

    versions = _sorted_versions(tariff_versions, utility)
    pieces = _pieces(versions, start, end, tz)
    rate_quantities: list[dict[str, Decimal]] | None = None
    if segment_quantities is None:
        piece_quantities = _split_by_duration(quantity, pieces)
    else:
        rate_quantities = _split_rate_quantities(quantity, segment_quantities, pieces, tz)
        piece_quantities = tuple(sum(by_rate.values(), ZERO) for by_rate in rate_quantities)

    usage = _TierUsage(start, usage_before_in_period, tz)
    lines: list[ChargeLine] = []
    for index, (piece, piece_quantity) in enumerate(zip(pieces, piece_quantities, strict=True)):
        for component in piece.version.components:
            match component:
                case FlatPrice():
                    _add_line(lines, component.name, component.name, piece_quantity, component.unit_price, piece)
                case TimeOfUse():
                    by_rate = (
                        _tou_split(component, piece, piece_quantity, tz)
                        if rate_quantities is None
                        else rate_quantities[index]
                    )
                    for label, rate_quantity in by_rate.items():
                        if rate_quantity:
                            price = component.price_of(label)
                            _add_line(lines, component.name, label, rate_quantity, price, piece)
                case Tiered():
                    used = usage.before(component.period, piece.start)
                    _tier_lines(lines, component, used, piece_quantity, household_size, piece)
                case FixedCharge() | SharedAreaAllocation():
                    pass  # not priced per unit
        usage.record(piece.start, piece_quantity)

    last = pieces[-1]
    tier_period = next((c.period for c in last.version.components if isinstance(c, Tiered)), CalendarPeriod.MONTH)
    usage_after = usage.before(tier_period, last.start)
    return PricedConsumption(utility, quantity, start, end, tuple(lines), usage_after)


def fixed_charge_lines(
    tariff_versions: Sequence[TariffVersion],
    utility: Utility,
    year: int,
    month: int,
    tz: tzinfo = CHINA_STANDARD_TIME,
) -> tuple[ChargeLine, ...]:
    """Fixed monthly charges for a local month, from the version in force at the month's start.

    A tariff that starts during the month charges nothing for that month: a fee is never
    charged for a month the tariff did not cover from its first day.
    """
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = period_end(CalendarPeriod.MONTH, start, tz)
    try:
        version = version_at(tariff_versions, utility, start)
    except NoTariffInEffect:
        return ()
    return tuple(
        ChargeLine(c.name, f"{year:04d}-{month:02d}", Decimal(1), c.amount_per_month, c.amount_per_month, start, end)
        for c in version.components
        if isinstance(c, FixedCharge) and c.amount_per_month
    )


def allocate_shared_cost(total: Decimal, households: Mapping[str, Decimal], basis: SharedBasis) -> dict[str, Decimal]:
    """Share a whole-fen cost (公摊) among households so the parts sum exactly to `total`.

    `households` maps a household id to its area in m² (ignored when `basis` is EQUAL). Each
    part is its pro-rata share rounded down to the fen; the fen left over go one each to the
    largest cut-off remainders, ties to the smaller household id (largest-remainder method, so
    the result is deterministic and no part is off by more than one fen).
    """
    try:
        whole = to_money(total)
    except ValueError as err:
        raise BillingDomainError(f"shared cost must be whole fen: {err}") from err
    if not households:
        raise BillingDomainError("no households to share the cost among")
    if basis is SharedBasis.AREA:
        if any(area < 0 for area in households.values()):
            raise BillingDomainError("area cannot be negative")
        weights = {key: Fraction(area) for key, area in households.items()}
    else:
        weights = {key: Fraction(1) for key in households}
    weight_sum = sum(weights.values(), Fraction(0))
    if weight_sum == 0:
        raise BillingDomainError("total area is zero")

    # Fractions keep the shares exact so the remainder ranking cannot be disturbed by rounding.
    cents = int(abs(whole) / CENT)
    shares = {key: cents * weight / weight_sum for key, weight in weights.items()}
    floors = {key: share.numerator // share.denominator for key, share in shares.items()}
    leftover = cents - sum(floors.values())
    ranked = sorted(shares, key=lambda key: (-(shares[key] - floors[key]), key))
    for key in ranked[:leftover]:
        floors[key] += 1
    sign = -1 if whole < 0 else 1
    return {key: Decimal(sign * floors[key]) * CENT for key in households}


def _sorted_versions(tariff_versions: Sequence[TariffVersion], utility: Utility) -> list[TariffVersion]:
    versions = sorted((v for v in tariff_versions if v.utility is utility), key=lambda v: v.effective_from)
    froms = [version.effective_from for version in versions]
    if len(set(froms)) != len(froms):
        raise BillingDomainError(f"two {utility} tariff versions take effect at the same instant")
    return versions


def _version_at(versions: list[TariffVersion], froms: list[datetime], at: datetime) -> TariffVersion:
    index = bisect.bisect_right(froms, at) - 1
    if index < 0:
        raise NoTariffInEffect(f"no tariff in force at {at.isoformat()}")
    return versions[index]


def _pieces(versions: list[TariffVersion], start: datetime, end: datetime, tz: tzinfo) -> list[_Piece]:
    froms = [version.effective_from for version in versions]
    if start == end:
        return [_Piece(start, end, _version_at(versions, froms, start))]
    cuts = sorted({*month_starts_between(start, end, tz), *(f for f in froms if start < f < end)})
    edges = [start, *cuts, end]
    return [_Piece(a, b, _version_at(versions, froms, a)) for a, b in pairwise(edges)]


def _split_by_duration(quantity: Decimal, pieces: list[_Piece]) -> tuple[Decimal, ...]:
    if len(pieces) == 1:
        return (quantity,)
    return apportion(quantity, [microseconds(p.end - p.start) for p in pieces])


def _split_rate_quantities(
    quantity: Decimal, segment_quantities: Mapping[str, Decimal], pieces: list[_Piece], tz: tzinfo
) -> list[dict[str, Decimal]]:
    if any(value < 0 for value in segment_quantities.values()):
        raise BillingDomainError("a tariff register delta cannot be negative")
    if sum(segment_quantities.values(), ZERO) != quantity:
        raise BillingDomainError("tariff register deltas must sum exactly to the quantity")
    result: list[dict[str, Decimal]] = [{} for _ in pieces]
    if len(pieces) == 1:
        result[0] = dict(segment_quantities)
        return result
    durations = [_rate_durations(_first_tou(p.version), p, tz) for p in pieces]
    for label, rate_quantity in segment_quantities.items():
        # A rate's delta happened while that rate was in force, so split it by that time;
        # if the schedule says the rate never ran (clock skew), fall back to plain duration.
        weights = [d.get(label, 0) for d in durations]
        if not any(weights):
            weights = [microseconds(p.end - p.start) for p in pieces]
        for index, part in enumerate(apportion(rate_quantity, weights)):
            result[index][label] = part
    return result


def _first_tou(version: TariffVersion) -> TimeOfUse | None:
    return next((c for c in version.components if isinstance(c, TimeOfUse)), None)


def _tou_split(tou: TimeOfUse, piece: _Piece, quantity: Decimal, tz: tzinfo) -> dict[str, Decimal]:
    if piece.start == piece.end:
        return {tou.rate_at(piece.start, tz): quantity}
    durations = _rate_durations(tou, piece, tz)
    labels = [label for label, span in durations.items() if span]
    parts = apportion(quantity, [durations[label] for label in labels])
    return dict(zip(labels, parts, strict=True))


def _rate_durations(tou: TimeOfUse | None, piece: _Piece, tz: tzinfo) -> dict[str, int]:
    """Microseconds each rate was in force during the piece (local wall-clock schedule)."""
    if tou is None:
        return {}
    totals = {rate.label: 0 for rate in tou.rates}
    segments = tou.segments
    # Start a day early: the small hours belong to the previous day's last segment.
    day = piece.start.astimezone(tz).date() - timedelta(days=1)
    last_day = piece.end.astimezone(tz).date()
    while day <= last_day:
        next_day = day + timedelta(days=1)
        for index, segment in enumerate(segments):
            if index + 1 < len(segments):
                segment_end = datetime.combine(day, segments[index + 1].start, tzinfo=tz)
            else:
                segment_end = datetime.combine(next_day, segments[0].start, tzinfo=tz)
            segment_start = datetime.combine(day, segment.start, tzinfo=tz)
            # Compare in UTC: subtracting two datetimes sharing a tzinfo ignores DST offsets.
            low = max(segment_start.astimezone(UTC), piece.start)
            high = min(segment_end.astimezone(UTC), piece.end)
            if high > low:
                totals[segment.rate] += microseconds(high - low)
        day = next_day
    return totals


def _tier_lines(
    lines: list[ChargeLine], tiered: Tiered, used: Decimal, quantity: Decimal, household_size: int, piece: _Piece
) -> None:
    lower = ZERO
    for block, width in zip(tiered.blocks, tiered.widths(household_size), strict=True):
        upper = None if width is None else lower + width
        low = max(used, lower)
        high = used + quantity if upper is None else min(used + quantity, upper)
        if high > low:
            _add_line(lines, tiered.name, block.label, high - low, block.unit_price, piece)
        if upper is None:
            return
        lower = upper


def _add_line(
    lines: list[ChargeLine], component: str, label: str, quantity: Decimal, price: Decimal, piece: _Piece
) -> None:
    if quantity:
        amount = _EXACT.multiply(quantity, price)
        lines.append(ChargeLine(component, label, quantity, price, amount, piece.start, piece.end))


class _TierUsage:
    """Usage already counted in a tier period, as pieces of an interval are priced in order."""

    def __init__(self, interval_start: datetime, usage_before: Decimal, tz: tzinfo) -> None:
        self._interval_start = interval_start
        self._usage_before = usage_before
        self._tz = tz
        self._recorded: list[tuple[datetime, Decimal]] = []

    def before(self, kind: CalendarPeriod, at: datetime) -> Decimal:
        key = period_start(kind, at, self._tz)
        used = self._usage_before if period_start(kind, self._interval_start, self._tz) == key else ZERO
        for start, quantity in self._recorded:
            if period_start(kind, start, self._tz) == key:
                used += quantity
        return used

    def record(self, start: datetime, quantity: Decimal) -> None:
        self._recorded.append((start, quantity))
