"""The device online rate report: meters online now (overall and per gateway) and availability over a window,
computed from the persisted online/offline edges (`collector.online_edges`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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


async def device_online_report(
    engine: AsyncEngine, start: datetime, end: datetime, gateway_id: str | None = None
) -> OnlineReport:
    """Registered meters (of one gateway, or all) with their state now and their edges over [start, end)."""
    async with engine.connect() as conn:
        meters = (
            await conn.execute(
                text(
                    "SELECT m.meter_id, b.gateway_id, coalesce(s.online, false) AS online FROM collector.meters m "
                    "JOIN collector.buses b USING (bus_id) LEFT JOIN collector.device_state s USING (meter_id) "
                    "WHERE m.enabled AND (CAST(:g AS text) IS NULL OR b.gateway_id = :g)"
                ),
                {"g": gateway_id},
            )
        ).all()
        ids = [m.meter_id for m in meters]
        edges = (
            await conn.execute(
                text(
                    "(SELECT DISTINCT ON (meter_id) meter_id, online, at FROM collector.online_edges "
                    " WHERE meter_id = ANY(:ids) AND at <= :start ORDER BY meter_id, at DESC) "
                    "UNION ALL (SELECT meter_id, online, at FROM collector.online_edges "
                    " WHERE meter_id = ANY(:ids) AND at > :start AND at < :end) ORDER BY meter_id, at"
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
