"""Reading rules without I/O: how often a poll reports a meter's clock offset and when it is flagged as drift."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from shuidian_shared.messages import CLOCK_OFFSET, ReadingFlag


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
