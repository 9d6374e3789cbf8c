"""Reading rules without I/O: the canonical values every driver publishes (tariff register names, volume in m³,
relay and valve states, the leakage flag) and how often a poll reports a meter's clock offset, flagged as drift
beyond the tolerance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from shuidian_protocols import cjt188
from shuidian_shared.messages import CLOCK_OFFSET, ReadingFlag, RelayState, ValveState

# Canonical names of tariff registers 1..4 (尖 峰 平 谷), as billing's time-of-use pricing names them.
TARIFF_REGISTERS = tuple(f"energy_tariff_{n}" for n in range(1, 5))

# Volume units a water meter may report, as the factor that turns them into m³.
TO_M3 = {cjt188.Unit.M3: Decimal(1), cjt188.Unit.LITRE: Decimal("0.001")}

CJT188_VALVES = {
    cjt188.ValveState.OPEN: ValveState.OPEN,
    cjt188.ValveState.CLOSED: ValveState.CLOSED,
    cjt188.ValveState.ABNORMAL: ValveState.ABNORMAL,
}


def tariff_registers(tariffs: list[Decimal]) -> dict[str, Decimal]:
    """Tariffs 1..4 under their canonical names; none when a meter has more (they have no canonical name)."""
    if len(tariffs) > len(TARIFF_REGISTERS):
        return {}
    return dict(zip(TARIFF_REGISTERS, tariffs, strict=False))


def relay_from_code(value: Decimal) -> RelayState:
    """A profile's `relay_open` register: 1 open, 0 closed, anything else unknown."""
    return RelayState.OPEN if value == 1 else RelayState.CLOSED if value == 0 else RelayState.UNKNOWN


def valve_from_code(value: Decimal) -> ValveState:
    """A profile's `valve_state` register: 0 open, 1 closed, anything else abnormal."""
    return ValveState.OPEN if value == 0 else ValveState.CLOSED if value == 1 else ValveState.ABNORMAL


def leaking(alarm: Decimal | None, residual_ma: Decimal | None, threshold_ma: Decimal) -> bool:
    """The meter's own leakage alarm is set, or the residual current reaches the threshold."""
    return bool(alarm) or (residual_ma is not None and residual_ma >= threshold_ma)


@dataclass(frozen=True)
class ClockPolicy:
    """Time sync: how close the read-back clock must be, and the largest offset a broadcast may correct. Polls:
    how often a meter's clock offset is reported (DL/T 645 spends two exchanges on it) and the offset beyond which
    a reading is flagged `clock_drift`."""

    tolerance_s: float = 5.0
    broadcast_limit_s: float = 300.0
    check_interval_s: float = 3600.0
    drift_tolerance_s: float = 60.0


CLOCK_DEFAULTS = ClockPolicy()


class ClockWatch:
    """Reports a meter's clock offset on a poll once per `check_interval_s` per meter, not on every poll."""

    def __init__(self, policy: ClockPolicy, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._monotonic = monotonic
        self._reported: dict[str, float] = {}  # meter → monotonic time of its last report

    def due(self, meter_id: str) -> bool:
        last = self._reported.get(meter_id)
        return last is None or self._monotonic() - last >= self.policy.check_interval_s

    def report(self, meter_id: str, offset_s: float, registers: dict[str, Decimal], flags: set[ReadingFlag]) -> None:
        """Put the offset (meter clock − true time, whole seconds) in the reading; flag drift beyond the tolerance."""
        self._reported[meter_id] = self._monotonic()
        registers[CLOCK_OFFSET] = Decimal(round(offset_s))
        if abs(offset_s) > self.policy.drift_tolerance_s:
            flags.add(ReadingFlag.CLOCK_DRIFT)
