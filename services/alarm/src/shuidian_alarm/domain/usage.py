"""Hourly consumption per meter from its cumulative register, for the spike and vacancy rules (pure).

A reading's delta since the previous one is split across the hour boundary it crosses in proportion
to time. An hour is reported once a reading from a later hour arrives, and only if readings covered it
from its start without a gap longer than `max_gap`: an hour half seen is no baseline and no spike.
A register that goes backwards (meter replaced, rollover) starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Final, Literal

from shuidian_alarm.domain.observations import HourlyConsumption
from shuidian_alarm.domain.times import HOUR, seconds
from shuidian_shared.messages import Reading

CUMULATIVE: Final = ("energy_active_import_total", "water_volume_total")
SLOT: Final = "_hourly"  # its slot among a meter's rule states
QUANTUM: Final = Decimal("0.000001")  # 1 Wh, 1 mL


@dataclass(frozen=True, kw_only=True)
class HourlyState:
    kind: Literal["hourly"] = "hourly"
    last_value: Decimal | None = None
    last_at: datetime | None = None
    hour_start: datetime | None = None
    quantity: Decimal = Decimal(0)
    complete: bool = False


@lru_cache(maxsize=256)  # the readings of a batch share a few sample times
def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _tidy(quantity: Decimal) -> Decimal:
    """Without trailing zeros or an exponent, so alarm texts read "6", not "6.000000" or "1E+2"."""
    normal = quantity.normalize()
    return normal if int(normal.as_tuple().exponent) <= 0 else normal.quantize(Decimal(1))


def accumulate(
    state: HourlyState | None, reading: Reading, max_gap: timedelta = HOUR
) -> tuple[HourlyState, list[HourlyConsumption]]:
    """Fold one reading in; the hours it completed."""
    state = state or HourlyState()
    value = None
    for name in CUMULATIVE:
        value = reading.registers.get(name)
        if value is not None:
            break
    at = reading.sampled_at
    if value is None or (state.last_at is not None and at <= state.last_at):
        return state, []
    hour = _hour(at)
    last, before = state.last_at, state.last_value
    if last is None or before is None or state.hour_start is None or value < before or at - last > max_gap:
        # A start, a replaced meter or a gap: the hour under way is only complete if it starts right here.
        return HourlyState(last_value=value, last_at=at, hour_start=hour, complete=at == hour), []
    delta = value - before
    if hour == state.hour_start:
        quantity = state.quantity + delta
        return HourlyState(
            last_value=value, last_at=at, hour_start=hour, quantity=quantity, complete=state.complete
        ), []
    # Crossed into a later hour: split the delta at each boundary in proportion to time. Shares are rounded
    # and the last hour takes the remainder, so the hours always add up to the register's rise exactly.
    done: list[HourlyConsumption] = []
    span = seconds(at - last)
    current, quantity, complete, cursor, remaining = state.hour_start, state.quantity, state.complete, last, delta
    while current < hour:
        boundary = current + HOUR
        share = (delta * seconds(boundary - cursor) / span).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
        remaining -= share
        if complete:
            done.append(
                HourlyConsumption(meter_id=reading.meter_id, hour_start=current, quantity=_tidy(quantity + share))
            )
        current, quantity, complete, cursor = boundary, Decimal(0), True, boundary
    return HourlyState(last_value=value, last_at=at, hour_start=hour, quantity=remaining, complete=True), done
