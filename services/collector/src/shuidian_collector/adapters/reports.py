"""The device online rate report: meters online now (overall and per gateway) and availability over a window,
computed from the persisted online/offline edges (`collector.online_edges`), which are kept for a retention period
(`retention.py`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.domain.availability import GatewayOnline, OnlineEdge, OnlineReport, online_seconds


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
