"""Consumption from cumulative meter registers, measured against a per-register watermark.

A watermark is the last accepted (register value, sample time) of one register of one meter.
`advance` compares a reading with it and says what to bill; meter replacement, CT-ratio
change and declared rollover are explicit events applied by `apply_event`.

Why the sum over any delivery equals a clean delivery: a reading bills only when it is newer
than the watermark, and then it bills the full register delta since the watermark. So a
duplicate (same sample time) bills nothing; a reordered older reading that arrives after a
newer one is STALE and bills nothing, because the newer reading's delta already covered the
whole span; a gap is covered by the next reading's delta. Summed over the stream, billed
quantity telescopes to (last accepted register − opening register + wraps × modulus) ×
multiplier, per multiplier regime.

Tariff registers (尖峰平谷, one cumulative register per rate) are tracked the same way: one
watermark per (meter, register), so each rate's delta can be priced at its own price.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Context, Decimal, Inexact
from enum import StrEnum

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.periods import as_utc, microseconds
from shuidian_shared.money import Quantity

DEFAULT_REGISTER_MAX = Decimal("999999.99")
TOTAL_REGISTER = "total"
ZERO = Decimal(0)

# Register deltas times a multiplier must be exact; trapping Inexact makes any loss an error.
_EXACT = Context(prec=60, traps=[Inexact])
_MICROSECONDS_PER_HOUR = Decimal(3_600_000_000)


class Outcome(StrEnum):
    """What a reading or an explicit event did to the watermark."""

    OPENED = "opened"
    BILLED = "billed"
    ROLLOVER = "rollover"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    STALE = "stale"
    HELD = "held"
    METER_REPLACED = "meter_replaced"
    MULTIPLIER_CHANGED = "multiplier_changed"


class HoldReason(StrEnum):
    """Why a reading was held for review instead of billed."""

    OUT_OF_RANGE = "out_of_range"
    REGISTER_DECREASED = "register_decreased"
    IMPLAUSIBLE_JUMP = "implausible_jump"


# RegisterReading, Watermark and Advance are built for every reading billed, so they are slotted
# but not frozen: a frozen dataclass costs about five times as much to build (one
# object.__setattr__ per field). Treat them as immutable; nothing assigns to their fields.


@dataclass(slots=True)
class RegisterReading:
    """One sampled value of one cumulative register of one meter."""

    meter_id: str
    register: str
    value: Decimal
    sampled_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampled_at", as_utc(self.sampled_at))
        if not self.value.is_finite():
            raise BillingDomainError("register value must be finite")


@dataclass(slots=True)
class Watermark:
    """The last accepted value of one register, with the multiplier (CT ratio) and the wrap point."""

    meter_id: str
    register: str
    value: Decimal
    sampled_at: datetime
    multiplier: Decimal = Decimal(1)
    register_max: Decimal = DEFAULT_REGISTER_MAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampled_at", as_utc(self.sampled_at))
        if not self.multiplier > 0:
            raise BillingDomainError("multiplier must be positive")
        if not self.register_max > 0:
            raise BillingDomainError("register_max must be positive")
        if not ZERO <= self.value <= self.register_max:
            raise BillingDomainError(f"register value {self.value} outside 0..{self.register_max}")

    @property
    def resolution(self) -> Decimal:
        """The register's least significant step, taken from how register_max is written."""
        return _resolution(self.register_max)

    @property
    def modulus(self) -> Decimal:
        """The value at which the register wraps to zero (999999.99 wraps at 1000000.00)."""
        return self.register_max + self.resolution


@dataclass(slots=True)
class Advance:
    """The result of a reading or event: quantity to bill, its interval and the new watermark.

    `billed` is already multiplied by the multiplier and is zero unless the outcome is BILLED,
    ROLLOVER, METER_REPLACED or MULTIPLIER_CHANGED. `interval` runs from the previous watermark's
    sample time to this one (an empty interval at the reading's time when nothing precedes it).
    `watermark` is the new one, or the old one unchanged; it is None only when the very first
    reading of a register is held.
    """

    outcome: Outcome
    billed: Quantity
    interval: tuple[datetime, datetime]
    watermark: Watermark | None
    hold_reason: HoldReason | None = None


@dataclass(frozen=True, slots=True)
class MeterReplaced:
    """The old meter was read a last time and a new one installed at `at`."""

    old_closing_register: Decimal
    new_opening_register: Decimal
    at: datetime
    new_multiplier: Decimal | None = None
    new_register_max: Decimal | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", as_utc(self.at))


@dataclass(frozen=True, slots=True)
class MultiplierChanged:
    """The CT ratio changed at `at`, when the register read `register_at_change`."""

    new_multiplier: Decimal
    at: datetime
    register_at_change: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", as_utc(self.at))


@dataclass(frozen=True, slots=True)
class RolloverDeclared:
    """An operator confirms the register wrapped past register_max and read `register_after` at `at`."""

    register_after: Decimal
    at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", as_utc(self.at))


MeterEvent = MeterReplaced | MultiplierChanged | RolloverDeclared


def advance(
    watermark: Watermark | None,
    reading: RegisterReading,
    *,
    max_plausible_rate: Decimal,
    allow_rollover: bool = False,
    multiplier: Decimal = Decimal(1),
    register_max: Decimal = DEFAULT_REGISTER_MAX,
) -> Advance:
    """Measure `reading` against `watermark` and return what to bill and the new watermark.

    `max_plausible_rate` is the most a household can consume per hour, in billed units (after
    the multiplier); a delta above rate × elapsed hours plus one register step is HELD.
    `allow_rollover` lets a decrease be read as a wrap at register_max when the wrapped delta is
    plausible. `multiplier` and `register_max` only seed the watermark of a first reading; once
    a watermark exists they change only through `apply_event`.
    """
    at = reading.sampled_at
    if watermark is None:
        if not ZERO <= reading.value <= register_max:
            return Advance(Outcome.HELD, ZERO, (at, at), None, HoldReason.OUT_OF_RANGE)
        opened = Watermark(reading.meter_id, reading.register, reading.value, at, multiplier, register_max)
        return Advance(Outcome.OPENED, ZERO, (at, at), opened)

    if (reading.meter_id, reading.register) != (watermark.meter_id, watermark.register):
        raise BillingDomainError(
            f"reading of {reading.meter_id}/{reading.register} applied to the watermark of "
            f"{watermark.meter_id}/{watermark.register}"
        )
    if at == watermark.sampled_at:
        # Readings are identified by (meter, sample time): the first value seen wins.
        return Advance(Outcome.DUPLICATE, ZERO, (at, at), watermark)
    if at < watermark.sampled_at:
        return Advance(Outcome.STALE, ZERO, (at, at), watermark)

    interval = (watermark.sampled_at, at)
    if not ZERO <= reading.value <= watermark.register_max:
        return Advance(Outcome.HELD, ZERO, interval, watermark, HoldReason.OUT_OF_RANGE)
    if reading.value == watermark.value:
        # Moving the sample time forward keeps the next interval (and its plausibility) tight.
        return Advance(Outcome.UNCHANGED, ZERO, interval, _moved(watermark, watermark.value, at))

    if reading.value > watermark.value:
        outcome, delta = Outcome.BILLED, reading.value - watermark.value
    elif allow_rollover:
        outcome, delta = Outcome.ROLLOVER, watermark.modulus - watermark.value + reading.value
    else:
        return Advance(Outcome.HELD, ZERO, interval, watermark, HoldReason.REGISTER_DECREASED)

    billed = _EXACT.multiply(delta, watermark.multiplier)
    if not _plausible(billed, at - watermark.sampled_at, max_plausible_rate, watermark):
        reason = HoldReason.IMPLAUSIBLE_JUMP if outcome is Outcome.BILLED else HoldReason.REGISTER_DECREASED
        return Advance(Outcome.HELD, ZERO, interval, watermark, reason)
    return Advance(outcome, billed, interval, _moved(watermark, reading.value, at))


def apply_event(watermark: Watermark, event: MeterEvent) -> Advance:
    """Apply an explicit meter event; `billed` is the tail measured under the old regime."""
    match event:
        case MeterReplaced():
            return _apply_replacement(watermark, event)
        case MultiplierChanged():
            return _apply_multiplier_change(watermark, event)
        case RolloverDeclared():
            return _apply_rollover(watermark, event)


def _apply_replacement(watermark: Watermark, event: MeterReplaced) -> Advance:
    _require_not_before(watermark, event.at)
    _require_closing(watermark, event.old_closing_register)
    tail = _EXACT.multiply(event.old_closing_register - watermark.value, watermark.multiplier)
    new = Watermark(
        watermark.meter_id,
        watermark.register,
        event.new_opening_register,
        event.at,
        event.new_multiplier if event.new_multiplier is not None else watermark.multiplier,
        event.new_register_max if event.new_register_max is not None else watermark.register_max,
    )
    return Advance(Outcome.METER_REPLACED, tail, (watermark.sampled_at, event.at), new)


def _apply_multiplier_change(watermark: Watermark, event: MultiplierChanged) -> Advance:
    _require_not_before(watermark, event.at)
    _require_closing(watermark, event.register_at_change)
    tail = _EXACT.multiply(event.register_at_change - watermark.value, watermark.multiplier)
    new = replace(watermark, value=event.register_at_change, sampled_at=event.at, multiplier=event.new_multiplier)
    return Advance(Outcome.MULTIPLIER_CHANGED, tail, (watermark.sampled_at, event.at), new)


def _apply_rollover(watermark: Watermark, event: RolloverDeclared) -> Advance:
    if event.at <= watermark.sampled_at:
        raise BillingDomainError("a declared rollover must come after the watermark's sample time")
    if not ZERO <= event.register_after <= watermark.register_max:
        raise BillingDomainError(f"register value {event.register_after} outside 0..{watermark.register_max}")
    delta = watermark.modulus - watermark.value + event.register_after
    billed = _EXACT.multiply(delta, watermark.multiplier)
    new = replace(watermark, value=event.register_after, sampled_at=event.at)
    return Advance(Outcome.ROLLOVER, billed, (watermark.sampled_at, event.at), new)


def _require_not_before(watermark: Watermark, at: datetime) -> None:
    if at < watermark.sampled_at:
        raise BillingDomainError("a meter event cannot precede the watermark's last accepted reading")


def _require_closing(watermark: Watermark, closing: Decimal) -> None:
    if not watermark.value <= closing <= watermark.register_max:
        raise BillingDomainError(
            f"closing register {closing} below the watermark {watermark.value} or above register_max"
        )


def _plausible(billed: Decimal, elapsed: timedelta, rate: Decimal, watermark: Watermark) -> bool:
    # One register step of slack so quantisation never holds a reading taken seconds apart.
    allowed = rate * (Decimal(microseconds(elapsed)) / _MICROSECONDS_PER_HOUR)
    return billed <= allowed or billed <= allowed + watermark.resolution * watermark.multiplier


def _moved(watermark: Watermark, value: Decimal, at: datetime) -> Watermark:
    # `dataclasses.replace` without its per-call field introspection: this runs once per reading.
    return Watermark(watermark.meter_id, watermark.register, value, at, watermark.multiplier, watermark.register_max)


@functools.lru_cache(maxsize=256)
def _resolution(register_max: Decimal) -> Decimal:
    exponent = register_max.as_tuple().exponent
    if not isinstance(exponent, int):
        raise BillingDomainError("register_max must be finite")
    return Decimal(1).scaleb(exponent)
