"""Retention of the online/offline edges against real PostgreSQL: edges older than the cutoff are pruned except each
meter's last one at or before it, availability over windows inside the retention is the same before and after
(through the report function and the HTTP endpoint), pruning is bounded, idempotent and one replica at a time, and a
window starting before the retention is refused with a problem."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters import reports, retention
from shuidian_collector.app import create_app
from shuidian_collector.domain.availability import rate
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import service_auth
from shuidian_devstack.pytest_plugin import migrated_engine

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
CUTOFF_H = 96  # the cutoff, in hours after the story starts

# meter suffix -> edges (hours after T, online), inserted in this order (ids ascending).
HISTORY: dict[str, list[tuple[float, bool]]] = {
    "flappy": [(0, True), (24, False), (48, True), (72, False), (120, True)],
    "pair": [(10, False), (30, True)],
    "single": [(5, True)],  # one edge long ago: it is the meter's state ever since and must stay
    "recent": [(100, True)],  # nothing before the cutoff
    "at-cutoff": [(50, False), (96, True)],  # an edge exactly at the cutoff is the one kept
    "tie": [(60, True), (60, False)],  # same instant: the later insert is the state, and is kept
}
# What must remain: each meter's last edge at or before the cutoff, and everything after it.
KEPT: dict[str, list[tuple[float, bool]]] = {
    "flappy": [(72, False), (120, True)],
    "pair": [(30, True)],
    "single": [(5, True)],
    "recent": [(100, True)],
    "at-cutoff": [(96, True)],
    "tie": [(60, False)],
}
PRUNABLE = sum(len(h) for h in HISTORY.values()) - sum(len(k) for k in KEPT.values())  # 6
# Windows inside the retention (hours after the start): from the cutoff itself, from just after it, and longer.
WINDOWS = [(96, 150), (98, 110), (98, 200)]


def story_start() -> datetime:
    """398 days ago, on the hour: the cutoff (+ 96 h) lies before the 400 days the other tests' collectors keep, so
    their housekeeping never touches these edges, and ours (cutoff at or before 394 days ago) nothing of theirs."""
    return (datetime.now(UTC) - timedelta(days=398)).replace(minute=0, second=0, microsecond=0)


def meter(tag: str, name: str) -> str:
    return f"ret-{tag}-{name}"


async def register(engine: AsyncEngine, tag: str, t: datetime) -> None:
    """One gateway per meter, so the per-gateway figures are per meter."""
    async with engine.begin() as conn:
        for name, history in HISTORY.items():
            m = meter(tag, name)
            await conn.execute(text("INSERT INTO collector.gateways (gateway_id) VALUES (:g)"), {"g": f"gw-{m}"})
            await conn.execute(
                text(
                    "INSERT INTO collector.buses (bus_id, gateway_id, host, port, protocol) "
                    "VALUES (:b, :g, '127.0.0.1', 9, 'dlt645')"
                ),
                {"b": f"bus-{m}", "g": f"gw-{m}"},
            )
            await conn.execute(
                text(
                    "INSERT INTO collector.meters (meter_id, bus_id, address, model, utility) "
                    "VALUES (:m, :b, '000000000001', 'dlt645-generic', 'electricity')"
                ),
                {"m": m, "b": f"bus-{m}"},
            )
            for hours, online in history:
                await conn.execute(
                    text(
                        "INSERT INTO collector.online_edges (meter_id, gateway_id, online, at) VALUES (:m, :g, :o, :t)"
                    ),
                    {"m": m, "g": f"gw-{m}", "o": online, "t": t + hours * H},
                )


async def unregister(engine: AsyncEngine, tag: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM collector.gateways WHERE gateway_id LIKE :p"), {"p": f"gw-ret-{tag}-%"})
        await conn.execute(text("DELETE FROM collector.online_edges WHERE meter_id LIKE :p"), {"p": f"ret-{tag}-%"})


async def stored(engine: AsyncEngine, tag: str, t: datetime) -> dict[str, list[tuple[float, bool]]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT meter_id, online, at FROM collector.online_edges WHERE meter_id LIKE :p ORDER BY id"),
                {"p": f"ret-{tag}-%"},
            )
        ).all()
    edges: dict[str, list[tuple[float, bool]]] = {}
    for r in rows:
        edges.setdefault(r.meter_id.removeprefix(f"ret-{tag}-"), []).append(((r.at - t) / H, r.online))
    return edges


async def availability(
    engine: AsyncEngine, tag: str, t: datetime, window: tuple[float, float]
) -> dict[str, tuple[float, float]]:
    """(online s, observed s) per meter over a window (hours after `t`), from the report function."""
    report = await reports.device_online_report(engine, t + window[0] * H, t + window[1] * H)
    return {
        g.gateway_id.removeprefix(f"gw-ret-{tag}-"): (g.online_seconds, g.observed_seconds)
        for g in report.gateways.values()
        if g.gateway_id.startswith(f"gw-ret-{tag}-")
    }


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_collector", "collector")
    yield engine
    await engine.dispose()


async def test_prune_keeps_each_meters_last_edge_before_the_cutoff(engine: AsyncEngine) -> None:
    tag, t = uuid.uuid4().hex[:6], story_start()
    cutoff = t + CUTOFF_H * H
    await register(engine, tag, t)
    try:
        before = [await availability(engine, tag, t, window) for window in WINDOWS]
        assert before[0]["flappy"] == (30 * 3600.0, 54 * 3600.0)  # offline from 72 h, online from 120 h
        assert before[0]["tie"] == (0.0, 54 * 3600.0)  # the later of the two edges at 60 h: offline
        assert before[0]["single"] == (54 * 3600.0, 54 * 3600.0)

        # Bounded: one batch deletes at most its limit, and the round goes on in batches until it comes up short.
        one = await retention.prune_batch(engine, cutoff, datetime.min.replace(tzinfo=UTC), limit=2)
        assert one is not None
        assert one[0] == 2
        assert sum(map(len, (await stored(engine, tag, t)).values())) == sum(map(len, HISTORY.values())) - 2
        rest = await retention.prune_online_edges(engine, cutoff, batch=2)

        after = [await availability(engine, tag, t, window) for window in WINDOWS]
        assert after == before
        assert await stored(engine, tag, t) == KEPT
        assert rest == PRUNABLE - 2

        # Idempotent: a second round finds nothing, and leaves the same edges.
        assert await retention.prune_online_edges(engine, cutoff, batch=2) == 0
        assert await stored(engine, tag, t) == KEPT
    finally:
        await unregister(engine, tag)


async def test_prune_one_replica_at_a_time(engine: AsyncEngine) -> None:
    tag, t = uuid.uuid4().hex[:6], story_start()
    cutoff = t + CUTOFF_H * H
    await register(engine, tag, t)
    try:
        async with engine.connect() as other:
            # Another replica mid-batch: it holds the job's transaction lock.
            await other.execute(text(retention.LOCK.replace("pg_try_advisory_xact_lock", "pg_advisory_xact_lock")))
            assert await retention.prune_online_edges(engine, cutoff) is None
            assert await stored(engine, tag, t) == HISTORY
            await other.rollback()
        assert await retention.prune_online_edges(engine, cutoff) == PRUNABLE
        assert await stored(engine, tag, t) == KEPT
    finally:
        await unregister(engine, tag)


async def test_service_prunes_and_refuses_windows_before_the_retention(
    engine: AsyncEngine, database_url: str, mqtt_url: str
) -> None:
    """The service's housekeeping prunes at start; the endpoint gives the same availability as before pruning for a
    window inside the retention and refuses one that starts before it."""
    tag, t = uuid.uuid4().hex[:6], story_start()
    await register(engine, tag, t)
    window = (98.0, 200.0)
    before = await availability(engine, tag, t, window)
    # 394 days: the service's cutoff falls in the hour after ours (t + 96 h), where no edge lies, so the same go.
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:8]}",
        mqtt_clean_session=True,
        gateways=(f"gw-elsewhere-{tag}",),  # polls none of ours: no new edge while we compare
        online_edges_retention_days=394,
    )
    app: FastAPI = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            async with asyncio.timeout(30):
                while await stored(engine, tag, t) != KEPT:
                    await asyncio.sleep(0.1)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://collector", auth=service_auth("collector")
            ) as http:
                start, end = (t + window[0] * H).isoformat(), (t + window[1] * H).isoformat()
                for name, (up, seen) in before.items():
                    params = {"gateway_id": f"gw-ret-{tag}-{name}", "start": start, "end": end}
                    body: dict[str, Any] = (await http.get("/v1/reports/device-online-rate", params=params)).json()
                    (gateway,) = body["gateways"]
                    expected = rate(up, seen)
                    assert gateway["availability"] == (None if expected is None else str(expected)), name
                    assert gateway["observed_seconds"] == round(seen, 3), name
                assert len(before) == len(HISTORY)

                early = datetime.now(UTC) - timedelta(days=395)
                refused = await http.get(
                    "/v1/reports/device-online-rate",
                    params={"start": early.isoformat(), "end": (early + timedelta(days=30)).isoformat()},
                )
                assert refused.status_code == 422, refused.text
                assert refused.headers["content-type"].startswith("application/problem+json")
                problem = refused.json()
                assert problem["code"] == "window_before_retention"
                assert problem["detail"].startswith("时间窗口早于在线记录的保留期（394 天）")
                assert "COLLECTOR_ONLINE_EDGES_RETENTION_DAYS" in problem["detail"]

                inside = datetime.now(UTC) - timedelta(days=393)
                accepted = await http.get(
                    "/v1/reports/device-online-rate",
                    params={"start": inside.isoformat(), "end": (inside + timedelta(days=30)).isoformat()},
                )
                assert accepted.status_code == 200, accepted.text
    finally:
        await unregister(engine, tag)
