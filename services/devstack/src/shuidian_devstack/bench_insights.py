"""Insights: the nightly run, a meter's year of raw samples, a tenant's report and the tariff what-if.

A year of history is generated in the database (daily hourly profiles and month sums for every household,
the last two days of raw hourly samples), then the service's own code runs against it: the nightly job's
day (frozen values, profiles, month roll-up, line loss) and the month's habit clusters; the tenant report
as the API serves it; the what-if under a time-of-use proposal. Work that grows with households is
measured at `INSIGHTS_BENCH_HOUSEHOLDS` (default 2,000) and extrapolated linearly to 100,000 — the
figures say so (`measured_households`). A meter's year is read from an archive of `ARCHIVE_METERS`
meters × 8,760 hourly samples in monthly partitions.

Each latency and the what-if are measured INSIGHTS_BENCH_REPEATS times (default 3) on the same data and the
median is reported; INSIGHTS_BENCH_ONLY=nightly,meter_year,report,what_if picks parts.

Run: `python -m shuidian_devstack.bench insights`.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_devstack.benchkit import emit
from shuidian_insights.adapters.archive import Archive
from shuidian_insights.adapters.container import Components
from shuidian_insights.app import compose
from shuidian_insights.domain import clusters
from shuidian_insights.domain.usage import month_key
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.contracts.insights import TariffSpec, WhatIfIn

TZ = ZoneInfo("Asia/Shanghai")
TARGET_HOUSEHOLDS = 100_000
ARCHIVE_METERS = 300
READS = 200
CURRENT = TariffSpec.model_validate({"components": [{"kind": "flat", "unit_price": "0.56"}]})
PROPOSED = TariffSpec.model_validate(
    {
        "components": [
            {
                "kind": "tou",
                "rates": [{"label": "峰", "unit_price": "0.68"}, {"label": "谷", "unit_price": "0.32"}],
                "segments": [{"start": "08:00", "rate": "峰"}, {"start": "22:00", "rate": "谷"}],
            },
            {
                "kind": "tiered",
                "base_household_size": 3,
                "blocks": [
                    {"label": "一档", "width": "180", "unit_price": "0", "extra_width_per_person": "30"},
                    {"label": "二档", "width": "100", "unit_price": "0.05"},
                    {"label": "三档", "width": None, "unit_price": "0.30"},
                ],
            },
        ]
    }
)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def run(database_url: str, mqtt_url: str) -> None:
    households = int(os.environ.get("INSIGHTS_BENCH_HOUSEHOLDS", "2000"))
    repeats = int(os.environ.get("INSIGHTS_BENCH_REPEATS", "3"))
    only = set(filter(None, os.environ.get("INSIGHTS_BENCH_ONLY", "").split(","))) or set(PARTS)
    scale = TARGET_HOUSEHOLDS / households
    engine = create_engine(database_url, pool_size=5)
    await upgrade(engine, "insights", str(files("shuidian_insights") / "migrations"))
    outbox = Outbox(engine, MqttLink(mqtt_url, service="insights", instance="bench"), "insights")
    c = compose(InsightsSettings(environment="test", raw_retention_months=14), engine, outbox, "bench", None)
    c.tariffs.put("electricity", CURRENT)
    today = datetime.now(TZ).date()
    try:
        started = time.perf_counter()
        await _generate(engine, c.archive, households, today)
        if "meter_year" in only:
            await _archive_year(engine, today)
        generated = time.perf_counter() - started
        context = {
            "measured_households": households,
            "extrapolated_to": TARGET_HOUSEHOLDS,
            "setup_s": round(generated, 1),
            "repeats": repeats,
            "median_of": repeats,
        }
        if "nightly" in only:
            await _nightly(c, today, scale, context)
        if "meter_year" in only:
            await _meter_year(c, engine, repeats)
        if "report" in only:
            await _report(c, today, households, repeats)
        if "what_if" in only:
            await _what_if(c, today, scale, repeats, context)
    finally:
        await engine.dispose()


PARTS = ("nightly", "meter_year", "report", "what_if")


async def _nightly(c: Components, today: date, scale: float, context: dict[str, Any]) -> None:
    yesterday = today - timedelta(days=1)
    started = time.perf_counter()
    await c.jobs.run_day(yesterday)
    day_seconds = time.perf_counter() - started
    month = month_key(today.replace(day=1) - timedelta(days=1))
    started = time.perf_counter()
    await c.analysis.month_profiles("electricity", [month], None)
    read_seconds = time.perf_counter() - started
    cluster_seconds = _cluster_full_size()
    nightly = ((day_seconds + read_seconds) * scale + cluster_seconds) / 60
    emit(
        "insights_nightly_run_100k_households",
        nightly,
        "min",
        10,
        nightly < 10,
        day_s=round(day_seconds, 2),
        month_read_s=round(read_seconds, 2),
        clusters_100k_s=round(cluster_seconds, 1),
        note="the job's day and the month read measured at measured_households and scaled linearly; "
        "the clustering measured at 100,000 synthetic shapes (one run)",
        **context,
    )


async def _meter_year(c: Components, engine: AsyncEngine, repeats: int) -> None:
    """A meter's year as the API answers it: PostgreSQL builds the JSON rows (`Archive.raw_text`)."""
    meters = [f"BENCH-A{i}" for i in range(ARCHIVE_METERS)]
    year_ago = datetime.now(UTC) - timedelta(days=365)
    p99s, p50s, server99s, server50s = [], [], [], []
    size = 0
    for _ in range(repeats):
        latencies, server = [], []
        for _ in range(READS):
            meter = random.choice(meters)
            started = time.perf_counter()
            body = await c.archive.raw_text([meter], year_ago, datetime.now(UTC), 20_000)
            latencies.append((time.perf_counter() - started) * 1000)
            size = len(body)
            server.append(await _server_ms(engine, meter, year_ago))
        p99s.append(_p(latencies, 0.99))
        p50s.append(_p(latencies, 0.5))
        server99s.append(_p(server, 0.99))
        server50s.append(_p(server, 0.5))
    emit(
        "insights_meter_year_read_p99",
        _median(p99s),
        "ms",
        50,
        _median(p99s) < 50,
        p50=round(_median(p50s), 1),
        runs_p99=[round(v, 1) for v in p99s],
        note="a meter's year of hourly samples as the API reads it: query and the JSON rows built by PostgreSQL, "
        "received as one text; median over runs of the p99 of READS reads",
        json_bytes=size,
        archive_rows=ARCHIVE_METERS * 8760,
    )
    emit(
        "insights_meter_year_query_p99",
        _median(server99s),
        "ms",
        50,
        _median(server99s) < 50,
        p50=round(_median(server50s), 1),
        runs_p99=[round(v, 1) for v in server99s],
        note="PostgreSQL's execution time of the archive's row query alone (EXPLAIN ANALYZE)",
    )


async def _report(c: Components, today: date, households: int, repeats: int) -> None:
    p99s, p50s = [], []
    items = 0
    for _ in range(repeats):
        latencies = []
        for _ in range(READS):
            account = f"BENCH-H{random.randrange(households)}"
            started = time.perf_counter()
            report = await c.analysis.tenant_report(account, today)
            latencies.append((time.perf_counter() - started) * 1000)
            items = len(report["items"])
        p99s.append(_p(latencies, 0.99))
        p50s.append(_p(latencies, 0.5))
    emit(
        "insights_tenant_report_p99",
        _median(p99s),
        "ms",
        100,
        _median(p99s) < 100,
        p50=round(_median(p50s), 1),
        runs_p99=[round(v, 1) for v in p99s],
        items=items,
        peers_per_estate=households // 10,
    )


async def _what_if(c: Components, today: date, scale: float, repeats: int, context: dict[str, Any]) -> None:
    request = WhatIfIn(utility="electricity", proposed=PROPOSED, months=12)
    walls, cpus = [], []
    result: dict[str, Any] = {}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = await c.analysis.what_if(request, today)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    seconds = _median(walls) * scale
    emit(
        "insights_what_if_100k_households_12_months",
        seconds,
        "s",
        60,
        seconds < 60,
        wall_s=[round(w, 2) for w in walls],
        cpu_s=[round(v, 2) for v in cpus],
        households=result["households"],
        revenue_change_pct=str(result["revenue_change_pct"]),
        note="the what-if as the API runs it (PostgreSQL sums each month per price class, rows streamed and priced "
        "as they arrive), measured at measured_households and scaled linearly; median wall of the runs",
        **context,
    )


async def _server_ms(engine: AsyncEngine, meter: str, since: datetime) -> float:
    async with engine.connect() as conn:
        plan = await conn.scalars(
            text(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT meter_id, register, read_at, value, reading_id::text "
                "FROM insights.readings WHERE meter_id = ANY(:meters) AND read_at >= :start AND read_at < :end "
                "ORDER BY meter_id, register, read_at LIMIT 20000"
            ),
            {"meters": [meter], "start": since, "end": datetime.now(UTC)},
        )
        return float(plan.one()[0]["Execution Time"])


def _cluster_full_size() -> float:
    """choose_k on 100,000 synthetic daily shapes of three kinds (the nightly run's clustering)."""
    rng = random.Random(1)
    points = []
    for i in range(TARGET_HOUSEHOLDS):
        peak = (7, 19, 2)[i % 3]
        shape = [0.2 + (3.0 if abs(h - peak) <= 1 else 0.0) * rng.uniform(0.8, 1.2) for h in range(24)]
        normalised = clusters.normalise(shape)
        assert normalised is not None
        points.append(normalised)
    started = time.perf_counter()
    clusters.choose_k(points, seed=1)
    return time.perf_counter() - started


async def _generate(engine: AsyncEngine, archive: Archive, households: int, today: date) -> None:
    """Households in 10 estates, a year of daily profiles with an evening peak, the months' sums, and the
    last two days of raw hourly samples."""
    first = today - timedelta(days=365)
    await archive.ensure_derived([first + timedelta(days=d) for d in range(0, 400, 28)])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO insights.households SELECT 'BENCH-H' || i, 'E' || (i % 10), 'R' || i, NULL, true, "
                "'B' || (i % 100), 40 + (i % 50), 1 + (i % 5), now() FROM generate_series(0, :n - 1) i"
            ),
            {"n": households},
        )
        await conn.execute(
            text(
                "INSERT INTO insights.household_meters SELECT 'BENCH-M' || i, 'BENCH-H' || i, 'R' || i, 'electricity' "
                "FROM generate_series(0, :n - 1) i"
            ),
            {"n": households},
        )
        await conn.execute(
            text(
                "INSERT INTO insights.daily_profiles SELECT 'BENCH-M' || i, d::date, "
                "ARRAY(SELECT round((0.1 + (i % 7) * 0.02 + CASE WHEN h BETWEEN 18 AND 21 THEN 1.0 ELSE 0.2 END "
                "* random())::numeric, 3) FROM generate_series(0, 23) h WHERE d IS NOT NULL), 24 "
                "FROM generate_series(0, :n - 1) i, generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day') d"
            ),
            {"n": households, "first": first, "last": today - timedelta(days=2)},
        )
        await conn.execute(
            text(
                "INSERT INTO insights.monthly_profiles SELECT meter_id, to_char(day, 'YYYY-MM'), "
                "array_agg(q ORDER BY h), max(days), sum(q) FROM (SELECT meter_id, date_trunc('month', day) AS day, h, "
                "sum(by_hour[h + 1]) AS q, count(*) AS days FROM insights.daily_profiles, generate_series(0, 23) h "
                "GROUP BY 1, 2, 3) s GROUP BY meter_id, day"
            )
        )
    start = datetime.combine(today - timedelta(days=2), datetime.min.time(), TZ)
    async with engine.begin() as conn:
        await _partitions(conn, start)
        await conn.execute(
            text(
                "INSERT INTO insights.readings SELECT 'BENCH-M' || i, 'energy_active_import_total', t, "
                "1000 + i + extract(epoch FROM t - :start) / 3600 * 0.4, gen_random_uuid() "
                "FROM generate_series(0, :n - 1) i, generate_series(:start, :end, interval '1 hour') t"
            ),
            {"n": households, "start": start, "end": start + timedelta(days=2)},
        )


async def _partitions(conn: AsyncConnection, start: datetime) -> None:
    """The 14 monthly partitions up to `start` (the archive creates them as readings arrive)."""
    month = start.astimezone(UTC).date().replace(day=1)
    for _ in range(14):
        following = (month + timedelta(days=32)).replace(day=1)
        await conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS insights.readings_{month:%Y%m} PARTITION OF insights.readings "
                f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') TO ('{following.isoformat()} 00:00+00')"
            )
        )
        month = (month - timedelta(days=1)).replace(day=1)


async def _archive_year(engine: AsyncEngine, today: date) -> None:
    """ARCHIVE_METERS meters × a year of hourly samples in the partitioned archive."""
    end = datetime.combine(today, datetime.min.time(), TZ)
    start = end - timedelta(days=365)
    async with engine.begin() as conn:
        await _partitions(conn, end)
        await conn.execute(
            text(
                "INSERT INTO insights.readings SELECT 'BENCH-A' || i, 'energy_active_import_total', t, "
                "extract(epoch FROM t - :start) / 3600 * 0.4, gen_random_uuid() "
                "FROM generate_series(0, :n - 1) i, generate_series(:start, :end, interval '1 hour') t ON CONFLICT DO NOTHING"
            ),
            {"n": ARCHIVE_METERS, "start": start, "end": end},
        )
        await conn.execute(text("ANALYZE insights.readings"))
