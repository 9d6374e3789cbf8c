"""The nightly job: for each local day not yet done (up to yesterday), freeze the registers, build the
day's hourly profiles, roll its month up and judge line loss — one transaction per step set, the day
recorded in `job_runs` once all committed, so a restart resumes at the first day not done and a rerun
writes the same rows. Partition upkeep and room details run on every pass, and in a month's first days
the month before's report notices go out (adapters/pushes.py). One replica at a time runs a pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_insights.adapters.analysis import Analysis
from shuidian_insights.adapters.archive import Archive
from shuidian_insights.adapters.households import Households
from shuidian_insights.adapters.pushes import MonthlyPush
from shuidian_insights.domain import monthly

log = logging.getLogger(__name__)

JOB_DAYS = Counter("insights_job_days_total", "local days the nightly job completed")
JOB_FAILURES = Counter("insights_job_failures_total", "nightly job passes that failed (retried next pass)")
JOB_SECONDS = Histogram("insights_job_day_seconds", "seconds per local day of the nightly job")
JOB_LAST_DAY = Gauge("insights_job_last_day_timestamp", "local midnight of the newest completed day (Unix time)")
SKIPPED = Counter("insights_job_skipped_total", "nightly passes left to another replica holding the job's lock")
NIGHTLY = "nightly"
JOB_LOCK = "insights-nightly-job"


class Jobs:
    def __init__(
        self,
        engine: AsyncEngine,
        archive: Archive,
        households: Households,
        analysis: Analysis,
        pushes: MonthlyPush,
        *,
        tz: ZoneInfo,
        backfill_days: int,
        interval_seconds: float,
        push_window_days: int = 3,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._archive = archive
        self._households = households
        self._analysis = analysis
        self._pushes = pushes
        self._push_window_days = push_window_days
        self._tz = tz
        self._backfill_days = backfill_days
        self._interval = interval_seconds
        self._clock = clock

    async def pending_days(self, today: date) -> list[date]:
        first = today - timedelta(days=self._backfill_days)
        async with self._engine.connect() as conn:
            done = set(
                (
                    await conn.scalars(
                        text("SELECT unit FROM insights.job_runs WHERE job = :j AND unit >= :f"),
                        {"j": NIGHTLY, "f": first.isoformat()},
                    )
                ).all()
            )
        days = [first + timedelta(days=i) for i in range((today - first).days)]
        return [d for d in days if d.isoformat() not in done]

    async def run_day(self, day: date) -> float:
        """Everything the nightly run derives for one local day; idempotent."""
        started = time.perf_counter()
        await self._archive.ensure_derived([day, day + timedelta(days=1)])
        async with self._engine.begin() as conn:
            await self._archive.freeze_day(conn, day)
            await self._archive.freeze_day(conn, day + timedelta(days=1))
            await self._archive.profile_day(conn, day)
            await self._archive.roll_up_month(conn, day)
        await self._analysis.judge_line_loss(day)
        seconds = time.perf_counter() - started
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO insights.job_runs (job, unit, seconds) VALUES (:j, :u, :s) "
                    "ON CONFLICT (job, unit) DO UPDATE SET done_at = now(), seconds = EXCLUDED.seconds"
                ),
                {"j": NIGHTLY, "u": day.isoformat(), "s": seconds},
            )
        JOB_DAYS.inc()
        JOB_SECONDS.observe(seconds)
        JOB_LAST_DAY.set(datetime.combine(day, datetime.min.time(), self._tz).timestamp())
        return seconds

    async def run_once(self) -> int | None:
        """One pass: the days not done yet. None when another replica holds the job's lock (it runs the pass).

        A session-level advisory lock, held on its own connection for the whole pass: two replicas started
        together never derive the same day twice or race on partitions; a replica that dies releases it with
        its connection."""
        async with self._engine.connect() as lock:
            if not await lock.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": JOB_LOCK}):
                SKIPPED.inc()
                return None
            try:
                now = self._clock()
                await self._archive.maintain(now)
                days = await self.pending_days(now.astimezone(self._tz).date())
                for day in days:
                    await self.run_day(day)
                await self._households.refresh_rooms()
                # Every day up to yesterday is done here, so on the 1st the month just ended is complete.
                month = monthly.due_month(now.astimezone(self._tz).date(), self._push_window_days)
                if month is not None:
                    await self._pushes.push(month)
                return len(days)
            finally:
                await lock.scalar(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": JOB_LOCK})
                await lock.commit()

    async def loop(self) -> None:
        # The first pass waits one interval: at start the archive may still be taking in readings that were queued
        # while the service was away, and a day run before its readings arrive is recorded as done.
        while True:
            await asyncio.sleep(self._interval)
            try:
                done = await self.run_once()
                if done is None:
                    log.debug("nightly job: another replica holds the lock; this pass skipped")
                elif done:
                    log.info("nightly job: %d day(s) done", done)
            except Exception:
                JOB_FAILURES.inc()
                log.exception("nightly job pass failed; retried in %.0f s", self._interval)
