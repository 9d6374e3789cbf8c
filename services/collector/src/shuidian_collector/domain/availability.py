"""Device availability without I/O: online and observed seconds from a meter's online/offline edges, rates to four
places, and which report windows can be answered (inside the edges' retention, at most 366 days)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from shuidian_collector.errors import WindowBeforeRetention

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
RATE = Decimal("0.0001")


@dataclass(frozen=True)
class OnlineEdge:
    """A meter seen online or offline from `at` on."""

    meter_id: str
    online: bool
    at: datetime


def online_seconds(edges: Iterable[OnlineEdge], start: datetime, end: datetime) -> tuple[float, float]:
    """(seconds online, seconds observed) of one meter in [start, end).

    `edges` are the meter's edges in time order: the last one at or before `start` (its state when the window
    opens) and those inside the window. Time before the first edge is not observed (the meter was not known yet),
    so it counts neither way.
    """
    online = observed = 0.0
    state: bool | None = None
    since = start
    for edge in edges:
        at = min(max(edge.at, start), end)
        if state is not None:
            observed += (at - since).total_seconds()
            if state:
                online += (at - since).total_seconds()
        state, since = edge.online, at
    if state is not None:
        observed += (end - since).total_seconds()
        if state:
            online += (end - since).total_seconds()
    return online, observed


def rate(part: float | int, whole: float | int) -> Decimal | None:
    """part ÷ whole to four decimals; None when there is nothing to divide by."""
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(RATE, ROUND_HALF_EVEN)


@dataclass
class GatewayOnline:
    gateway_id: str
    meters: int = 0
    online: int = 0
    online_seconds: float = 0.0
    observed_seconds: float = 0.0


@dataclass
class OnlineReport:
    start: datetime
    end: datetime
    gateways: dict[str, GatewayOnline] = field(default_factory=dict)


def refuse_before_retention(start: datetime, now: datetime, retention_days: int) -> None:
    """Refuse (422 `window_before_retention`) a window starting before the edges kept.

    Refused rather than clamped. Pruning keeps only each meter's last edge before the cutoff, so the state at such
    a start would be read from whatever edge survived, and the availability would be wrong without anything saying
    so. Clamping `start` to the cutoff would answer a different question under the caller's label: a monthly or
    yearly availability is quoted with its period, and a figure for "this year" that really covers its last ten
    months is misleading wherever the response's `start` is not read back (the API echoes the requested window,
    and the api-gateway's staff report passes the figure on). Refusing is what the report already does with a
    window longer than 366 days; the problem names the earliest start that can be answered.
    """
    cutoff = now - timedelta(days=retention_days)
    if start >= cutoff:
        return
    # The next whole minute: a start a caller can copy, still inside the retention when it asks again.
    earliest = (cutoff + timedelta(minutes=1)).replace(second=0, microsecond=0).isoformat()
    raise WindowBeforeRetention(
        f"时间窗口早于在线记录的保留期（{retention_days} 天），最早可从 {earliest} 开始 · "
        f"the window starts before the online history kept ({retention_days} days, "
        f"COLLECTOR_ONLINE_EDGES_RETENTION_DAYS): start at {earliest} or later",
    )
