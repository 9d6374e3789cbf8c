"""Poll scheduling without I/O: when each meter is due, back-off for meters that stopped answering, and
whether a gateway as a whole is up (with jittered reconnect back-off). Time (`now`, monotonic seconds)
and randomness are passed in."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class MeterSchedule:
    """Next due time per meter. A meter that answered is due again one interval after it was due (so the
    cadence does not drift); one that failed n times in a row waits interval × 2^(n-1), capped, so a
    dead meter costs its neighbours ever less bus time."""

    def __init__(self, intervals: dict[str, float], *, max_backoff: float, now: float) -> None:
        self.intervals = intervals
        self.max_backoff = max_backoff
        self._due = dict.fromkeys(intervals, now)
        self._failures = dict.fromkeys(intervals, 0)

    def due(self, now: float) -> list[str]:
        return [meter for meter, at in self._due.items() if at <= now]

    def due_at(self, meter_id: str) -> float:
        return self._due[meter_id]

    def next_due(self) -> float:
        return min(self._due.values(), default=float("inf"))

    def failures(self, meter_id: str) -> int:
        return self._failures[meter_id]

    def answered(self, meter_id: str, now: float) -> None:
        """Due one interval after it was due, and never more than one interval from now: a meter asked before its
        back-off ran out (the probe that finds a gateway back) keeps its normal cadence, not the back-off."""
        self._failures[meter_id] = 0
        interval = self.intervals[meter_id]
        self._due[meter_id] = max(min(self._due[meter_id] + interval, now + interval), now)

    def failed(self, meter_id: str, now: float) -> int:
        failures = self._failures[meter_id] = self._failures[meter_id] + 1
        self._due[meter_id] = now + self.backoff(meter_id, failures)
        return failures

    def backoff(self, meter_id: str, failures: int) -> float:
        return min(self.intervals[meter_id] * 2.0 ** max(failures - 1, 0), self.max_backoff)

    def all_failing(self) -> bool:
        """Whether the last attempt on every meter failed (a meter never tried does not count as failing)."""
        return bool(self._failures) and all(count > 0 for count in self._failures.values())

    def restart(self, now: float, meters: Iterable[str] | None = None) -> None:
        """Everything (or the given meters) due now with a clean slate: the gateway came back."""
        for meter in self._due if meters is None else meters:
            self._due[meter] = now
            self._failures[meter] = 0


class Edge(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass
class GatewayHealth:
    """Online, offline or not yet known; while offline, the next probe is due after a full-jitter back-off."""

    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    online: bool | None = None
    probes: int = 0
    retry_at: float = 0.0

    def observe(self, *, answered: bool, all_failing: bool, now: float, rng: random.Random) -> Edge | None:
        """Fold one cycle (or probe) in; return the edge it causes, if any."""
        if answered:
            self.probes = 0
            if self.online is not True:
                self.online = True
                return Edge.ONLINE
            return None
        if not all_failing:
            return None
        self.probes += 1
        ceiling = min(self.initial_backoff * 2.0 ** (self.probes - 1), self.max_backoff)
        # Jittered: 300 gateways behind one dead uplink must not all reconnect at the same instant.
        self.retry_at = now + rng.uniform(ceiling / 2, ceiling)
        if self.online is not False:
            self.online = False
            return Edge.OFFLINE
        return None
