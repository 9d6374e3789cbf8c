"""The nightly job on real PostgreSQL: one pass at a time across replicas (a session advisory lock), the first
pass of the loop waits one interval, and the monthly report notices go out on the 1st once per household."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib.resources import files
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack.pytest_plugin import private_database
from shuidian_insights.adapters.container import Components
from shuidian_insights.adapters.jobs import JOB_LOCK, NIGHTLY, Jobs
from shuidian_insights.adapters.pushes import MonthlyPush
from shuidian_insights.app import compose
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.contracts.insights import MonthlyReportReady

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def engine(pg_server_url: str) -> AsyncIterator[AsyncEngine]:
    async with private_database(pg_server_url, "shuidian_insights_jobs") as url:
        built = create_engine(url, pool_size=5)
        await upgrade(built, "insights", str(files("shuidian_insights") / "migrations"))
        try:
            yield built
        finally:
            await built.dispose()


def replica(engine: AsyncEngine, mqtt_url: str, name: str, interval: float = 600.0) -> Components:
    """One insights replica's pieces on the shared database (its own engine, as a second process would have)."""
    settings = InsightsSettings(environment="test", backfill_days=20, job_interval_seconds=interval)
    outbox = Outbox(engine, MqttLink(mqtt_url, service="insights", instance=name), "insights")
    return compose(settings, engine, outbox, name, None)


async def days_done(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(text("SELECT count(*) FROM insights.job_runs WHERE job = :j"), {"j": NIGHTLY}) or 0
        )


async def test_two_replicas_passing_at_once_run_the_nightly_job_once(engine: AsyncEngine, mqtt_url: str) -> None:
    other = create_engine(engine.url.render_as_string(hide_password=False), pool_size=5)
    try:
        first, second = replica(engine, mqtt_url, "a"), replica(other, mqtt_url, "b")
        results = await asyncio.gather(first.jobs.run_once(), second.jobs.run_once())
        assert sorted(results, key=lambda r: r is None) == [20, None]  # one ran the 20 days, one stood aside
        assert await days_done(engine) == 20
        # The lock is released after the pass: the next pass runs (nothing left to do).
        assert await second.jobs.run_once() == 0
    finally:
        await other.dispose()


async def test_a_pass_stands_aside_while_another_holds_the_lock(engine: AsyncEngine, mqtt_url: str) -> None:
    jobs = replica(engine, mqtt_url, "c").jobs
    async with engine.connect() as holder:
        assert await holder.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": JOB_LOCK})
        assert await jobs.run_once() is None
        assert await days_done(engine) == 0
        await holder.scalar(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": JOB_LOCK})
    assert await jobs.run_once() == 20


async def test_the_loops_first_pass_waits_one_interval(engine: AsyncEngine, mqtt_url: str) -> None:
    jobs = replica(engine, mqtt_url, "d", interval=0.5).jobs
    loop = asyncio.create_task(jobs.loop())
    try:
        await asyncio.sleep(0.2)
        assert await days_done(engine) == 0  # not at start: readings queued while away may still be arriving
        for _ in range(100):
            if await days_done(engine) == 20:
                break
            await asyncio.sleep(0.1)
        assert await days_done(engine) == 20
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def seed_months(engine: AsyncEngine, tag: str) -> None:
    """Three households of one estate: two with November use (one also with October's), one without."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO insights.households (account_id, estate_id, room_id, tenant_id, leased, since) "
                "SELECT :t || '-A' || i, 'E-' || :t, :t || '-R' || i, :t || '-T' || i, true, now() "
                "FROM generate_series(1, 3) i"
            ),
            {"t": tag},
        )
        await conn.execute(
            text(
                "INSERT INTO insights.household_meters SELECT :t || '-M' || i, :t || '-A' || i, :t || '-R' || i, "
                "'electricity' FROM generate_series(1, 3) i"
            ),
            {"t": tag},
        )
        hours = "ARRAY[" + ",".join(["1.5"] * 24) + "]::numeric[]"
        await conn.execute(
            text(
                f"INSERT INTO insights.monthly_profiles VALUES (:t || '-M1', '2026-11', {hours}, 30, 36), "
                f"(:t || '-M1', '2026-10', {hours}, 31, 30), (:t || '-M2', '2026-11', {hours}, 30, 12.25)"
            ),
            {"t": tag},
        )


async def queued_reports(engine: AsyncEngine, tag: str) -> list[MonthlyReportReady]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT topic, payload FROM insights.outbox WHERE topic LIKE :p ORDER BY id"),
            {"p": f"%/{tag}-%/monthly-report"},
        )
        found = []
        for topic, payload in rows:
            report = MonthlyReportReady.model_validate_json(bytes(payload))
            assert topic == topics.monthly_report(report.account_id)
            found.append(report)
        return found


async def test_the_monthly_report_goes_out_on_the_first_once_per_household(engine: AsyncEngine, mqtt_url: str) -> None:
    tag = "MR" + str(id(engine) % 10_000)
    parts = replica(engine, mqtt_url, "e")
    await parts.archive.ensure_derived([date(2026, 10, 1), date(2026, 11, 1)])
    await seed_months(engine, tag)
    outbox = Outbox(engine, MqttLink(mqtt_url, service="insights", instance="e"), "insights")
    pushes = MonthlyPush(engine, outbox, "insights-e")

    def at(day: date) -> Jobs:
        noon = datetime.combine(day, time(12), ZoneInfo("Asia/Shanghai")).astimezone(UTC)
        return Jobs(
            engine,
            parts.archive,
            parts.households,
            parts.analysis,
            pushes,
            tz=ZoneInfo("Asia/Shanghai"),
            backfill_days=1,
            interval_seconds=600,
            clock=lambda: noon,
        )

    await at(date(2026, 11, 30)).run_once()  # not the 1st: nothing
    assert await queued_reports(engine, tag) == []
    await at(date(2026, 12, 1)).run_once()
    await at(date(2026, 12, 1)).run_once()  # a second pass the same day: nothing new
    await at(date(2026, 12, 2)).run_once()  # nor the day after
    reports = await queued_reports(engine, tag)
    assert sorted(r.account_id for r in reports) == [f"{tag}-A1", f"{tag}-A2"]  # A3 used nothing: no report
    first = next(r for r in reports if r.account_id == f"{tag}-A1")
    assert (first.month, first.estate_id, first.room_id, first.tenant_id) == (
        "2026-11",
        f"E-{tag}",
        f"{tag}-R1",
        f"{tag}-T1",
    )
    [usage] = first.usage
    assert (usage.utility, usage.quantity, usage.previous_quantity, usage.change_pct) == (
        "electricity",
        Decimal(36),
        Decimal(30),
        Decimal("20.0"),
    )
    assert first.title_zh == "2026年11月用能报告"
    assert "用电 36.0 度，比上月多 20.0%" in first.body_zh
    assert "20.0% more than the month before" in first.body_en
    assert first.report_path == f"/v1/me/accounts/{tag}-A1/insights"
    second = next(r for r in reports if r.account_id == f"{tag}-A2")
    assert second.usage[0].change_pct is None  # no October to compare with
    # A household whose November use is only derived later (a late backfill) still gets its one notice.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"INSERT INTO insights.monthly_profiles VALUES (:m, '2026-11', ARRAY[{','.join(['0.5'] * 24)}], 30, 12)"
            ),
            {"m": f"{tag}-M3"},
        )
    assert await pushes.push("2026-11") == 1
    assert await pushes.push("2026-11") == 0
    assert len(await queued_reports(engine, tag)) == 3


async def partitions_of(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        names = await conn.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:t AS regclass) ORDER BY 1"
            ),
            {"t": f"insights.{table}"},
        )
        return list(names.all())


async def test_frozen_values_and_profiles_are_partitioned_and_kept_for_their_retention(
    engine: AsyncEngine, mqtt_url: str
) -> None:
    archive = replica(engine, mqtt_url, "f").archive
    now = datetime(2026, 12, 7, 4, tzinfo=UTC)
    old = [date(2021, 11, 30), date(2024, 10, 31), date(2024, 11, 1), date(2024, 12, 31), date(2016, 6, 1)]
    await archive.ensure_derived(old)
    await archive.maintain(now)
    # Ahead: this month and the next two; kept: 60 months of frozen values, 25 of daily profiles (the month
    # before retention is dropped, whole partitions only), ten years of monthly profiles (whole years).
    frozen = await partitions_of(engine, "frozen")
    daily = await partitions_of(engine, "daily_profiles")
    monthly = await partitions_of(engine, "monthly_profiles")
    assert frozen == [f"frozen_{m}" for m in ("202410", "202411", "202412", "202612", "202701", "202702")]
    assert daily == [f"daily_profiles_{m}" for m in ("202412", "202612", "202701", "202702")]
    assert monthly == [
        "monthly_profiles_2021",
        "monthly_profiles_2024",
        "monthly_profiles_2026",
        "monthly_profiles_2027",
    ]


async def test_the_hot_queries_read_through_indexes_and_prune_partitions(engine: AsyncEngine, mqtt_url: str) -> None:
    """Every query a request or the nightly job runs against a table that grows with time: no sequential scan
    over it, and only the partitions the query's dates name."""
    archive = replica(engine, mqtt_url, "g").archive
    months = [date(2026, m, 1) for m in range(1, 13)]
    await archive.ensure_derived(months)
    async with engine.begin() as conn:
        await archive.ensure_partitions(conn, months)
        # Enough rows that the planner prefers an index to a scan, as a real archive does.
        await conn.execute(
            text(
                "INSERT INTO insights.daily_profiles SELECT 'M' || i, d, ARRAY[1,2,3]::numeric[], 24 "
                "FROM generate_series(1, 400) i, generate_series(date '2026-01-01', date '2026-12-31', interval '1 day') d"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO insights.monthly_profiles SELECT 'M' || i, to_char(d, 'YYYY-MM'), ARRAY[1]::numeric[], 30, 1 "
                "FROM generate_series(1, 400) i, generate_series(date '2026-01-01', date '2026-12-01', interval '1 month') d"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO insights.readings SELECT 'M' || i, 'energy_active_import_total', t, 1, gen_random_uuid() "
                "FROM generate_series(1, 40) i, generate_series(timestamptz '2026-01-01', timestamptz '2026-12-31', "
                "interval '1 hour') t"
            )
        )
        await conn.execute(text("ANALYZE insights.daily_profiles, insights.monthly_profiles, insights.readings"))
    queries = {
        "a tenant's window of days": (
            "SELECT day, by_hour FROM insights.daily_profiles WHERE meter_id = 'M7' AND day >= '2026-10-01' "
            "AND day <= '2026-11-29'",
            ("daily_profiles_202610", "daily_profiles_202611"),
        ),
        "similar homes in a month": (
            "SELECT meter_id, total FROM insights.monthly_profiles WHERE month = '2026-11' AND meter_id = 'M9'",
            ("monthly_profiles_2026",),
        ),
        "a meter's year of samples": (
            "SELECT * FROM insights.readings WHERE meter_id = 'M3' AND read_at >= '2026-01-01' AND read_at < '2026-12-31'",
            ("readings_202601", "readings_202612"),
        ),
        "the nightly job's day of samples": (
            "SELECT meter_id FROM insights.readings WHERE read_at > '2026-11-29 16:00+00' AND read_at <= '2026-11-30 16:00+00'",
            ("readings_202611",),
        ),
    }
    async with engine.connect() as conn:
        for name, (query, partitions) in queries.items():
            if name == "the nightly job's day of samples":
                # A day is 1/30 of a month's partition: at this test's size a scan is cheaper, at a city's it is
                # not. What must hold is that the day can be read through the BRIN index on read_at.
                await conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join((await conn.scalars(text(f"EXPLAIN {query}"))).all())
            assert "Seq Scan" not in plan, f"{name}: {plan}"
            for partition in partitions:
                assert partition in plan, f"{name}: {plan}"
            assert "readings_202603" not in plan or name == "a meter's year of samples", f"{name}: {plan}"
            assert "daily_profiles_202603" not in plan, f"{name}: {plan}"
        assert "readings_202611_read_at_idx" in plan or "Bitmap Index Scan" in plan, plan
