"""The device online rate report: meters online now (overall and per gateway) and availability over a window,
computed from the persisted online/offline edges (`collector.online_edges`), which are kept for a retention period
(`retention.py`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_kit.errors import ServiceError

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
    raise ServiceError(
        f"时间窗口早于在线记录的保留期（{retention_days} 天），最早可从 {earliest} 开始 · "
        f"the window starts before the online history kept ({retention_days} days, "
        f"COLLECTOR_ONLINE_EDGES_RETENTION_DAYS): start at {earliest} or later",
        code="window_before_retention",
        status_code=422,
    )


async def device_online_report(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    gateway_id: str | None = None,
    meter_ids: Sequence[str] | None = None,
) -> OnlineReport:
    """Registered meters (of one gateway, or all; only `meter_ids` when given) with their state now and their
    edges over [start, end).

    The caller keeps `start` inside the retention (`refuse_before_retention`): before it, edges are pruned.
    """
    async with engine.connect() as conn:
        meters = (
            await conn.execute(
                text(
                    "SELECT m.meter_id, b.gateway_id, coalesce(s.online, false) AS online FROM collector.meters m "
                    "JOIN collector.buses b USING (bus_id) LEFT JOIN collector.device_state s USING (meter_id) "
                    "WHERE m.enabled AND (CAST(:g AS text) IS NULL OR b.gateway_id = :g) "
                    "AND (CAST(:m AS text[]) IS NULL OR m.meter_id = ANY(CAST(:m AS text[])))"
                ),
                {"g": gateway_id, "m": None if meter_ids is None else list(meter_ids)},
            )
        ).all()
        ids = [m.meter_id for m in meters]
        edges = (
            await conn.execute(
                text(
                    # Edges at the same instant are ordered by id (insertion order), as retention decides which
                    # one to keep: the state at `start` is then the same before and after pruning.
                    "(SELECT DISTINCT ON (meter_id) meter_id, online, at, id FROM collector.online_edges "
                    " WHERE meter_id = ANY(:ids) AND at <= :start ORDER BY meter_id, at DESC, id DESC) "
                    "UNION ALL (SELECT meter_id, online, at, id FROM collector.online_edges "
                    " WHERE meter_id = ANY(:ids) AND at > :start AND at < :end) ORDER BY meter_id, at, id"
                ),
                {"ids": ids, "start": start, "end": end},
            )
        ).all()
    by_meter: dict[str, list[OnlineEdge]] = defaultdict(list)
    for e in edges:
        by_meter[e.meter_id].append(OnlineEdge(e.meter_id, e.online, e.at))
    report = OnlineReport(start, end)
    for meter in meters:
        gateway = report.gateways.setdefault(meter.gateway_id, GatewayOnline(meter.gateway_id))
        gateway.meters += 1
        gateway.online += int(meter.online)
        up, seen = online_seconds(by_meter.get(meter.meter_id, ()), start, end)
        gateway.online_seconds += up
        gateway.observed_seconds += seen
    return report


DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
