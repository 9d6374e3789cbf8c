"""Device state edges without I/O: per meter, the state last announced (online, relay, valve, keep-power); a cycle's
observations are folded in and only the changes are announced, once each. A value a poll did not read (None)
keeps the one announced before."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shuidian_shared.messages import RelayState, ValveState

GATEWAY_OFFLINE_REASON = "gateway_offline"


@dataclass(frozen=True)
class Snapshot:
    online: bool
    relay: RelayState | None
    valve: ValveState | None
    keep_power: bool | None


@dataclass(frozen=True)
class StateRow:
    """One meter as a cycle (or a command's read-back) saw it."""

    meter_id: str
    online: bool
    relay: RelayState | None
    valve: ValveState | None
    keep_power: bool | None
    reading_at: datetime | None
    reason: str | None


@dataclass(frozen=True)
class StateEdge:
    """A change to announce: the row that caused it, the state now, and whether `online` itself changed."""

    row: StateRow
    state: Snapshot
    online_changed: bool


class StateEdges:
    """The state last announced per meter."""

    def __init__(self) -> None:
        self._announced: dict[str, Snapshot] = {}

    def fold(self, rows: Sequence[StateRow], *, announce: bool = True) -> list[StateEdge]:
        """Fold in one cycle's rows; return the edges to announce. `announce=False` records nothing and returns
        none: a gateway outage is announced once for the gateway, not per meter."""
        edges: list[StateEdge] = []
        for row in rows:
            previous = self._announced.get(row.meter_id)
            current = Snapshot(
                row.online,
                row.relay if row.relay is not None or previous is None else previous.relay,
                row.valve if row.valve is not None or previous is None else previous.valve,
                row.keep_power if row.keep_power is not None or previous is None else previous.keep_power,
            )
            if current == previous or not announce:
                continue
            edges.append(StateEdge(row, current, previous is None or previous.online != row.online))
            self._announced[row.meter_id] = current
        return edges
