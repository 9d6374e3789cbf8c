"""The reading archive (抄表记录): every register value read, in monthly range partitions of
`insights.readings`; the daily frozen values and per-hour profiles derived from it (partitioned too: by
local month, monthly profiles by year); and the retention of each.

Ingest is one set-based insert per batch (`unnest`), `ON CONFLICT DO NOTHING` on (meter, register,
read_at), so a replayed or duplicated batch changes nothing. A batch's months get their partition on
first sight (known partitions are cached); readings older than the retention are not archived (counted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_insights.domain.usage import USAGE_REGISTERS, month_start, months_between, next_month
from shuidian_shared.messages import ReadingBatch

log = logging.getLogger(__name__)

ARCHIVED = Counter("insights_readings_archived_total", "register values archived (duplicates included)")
TOO_OLD = Counter("insights_readings_too_old_total", "register values older than the raw retention, not archived")
PARTITIONS = Counter("insights_partitions_total", "reading partitions created or dropped", ["action"])


ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def partition_name(month: date) -> str:
    return f"readings_{month:%Y%m}"


# Derived tables and the span of one partition: frozen values and daily profiles by local month of `day`,
# monthly profiles by year of `month` (YYYY-MM text: a year's range is 'YYYY-01' to 'YYYY+1-01').
DERIVED = {"frozen": "month", "daily_profiles": "month", "monthly_profiles": "year"}


def derived_partition(table: str, day: date) -> tuple[str, str, str]:
    """(partition name, lower bound, upper bound) of the partition of `table` that holds `day`."""
    if DERIVED[table] == "year":
        return f"{table}_{day:%Y}", f"{day.year}-01", f"{day.year + 1}-01"
    first = month_start(day)
    return f"{table}_{first:%Y%m}", first.isoformat(), month_start(first + timedelta(days=32)).isoformat()


class Archive:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention_months: int,
        tz: ZoneInfo,
        derived_retention: dict[str, int] | None = None,
    ) -> None:
        self._engine = engine
        self._retention_months = retention_months
        self._tz = tz
        self._partitions: set[date] = set()
        self._derived: set[str] = set()  # derived partitions known to exist
        # months kept per derived table (a yearly table keeps whole years covering them)
        self._derived_retention = derived_retention or {"frozen": 60, "daily_profiles": 25, "monthly_profiles": 120}

    # --- partitions -----------------------------------------------------------------------------

    async def ensure_partitions(self, conn: AsyncConnection, months: Sequence[date]) -> None:
        for month in sorted(set(months) - self._partitions):
            following = month_start(month + timedelta(days=32))
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('insights-partitions'))"))
            created = await conn.scalar(
                text("SELECT to_regclass(:name) IS NULL"), {"name": f"insights.{partition_name(month)}"}
            )
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS insights.{partition_name(month)} PARTITION OF insights.readings "
                    f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') TO ('{following.isoformat()} 00:00+00')"
                )
            )
            if created:
                PARTITIONS.labels("created").inc()
            self._partitions.add(month)

    async def ensure_derived(self, days: Sequence[date]) -> None:
        """The partitions of the frozen values and profiles that hold `days` (local dates), each created in a
        short transaction of its own: creating a partition locks its parent, and the day's work must not hold
        that lock while it runs."""
        wanted = {derived_partition(table, day) for table in DERIVED for day in days}
        for name, lower, upper in sorted(wanted):
            if name in self._derived:
                continue
            table = name.rsplit("_", 1)[0]
            async with self._engine.begin() as conn:
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('insights-partitions'))"))
                if await conn.scalar(text("SELECT to_regclass(:name) IS NULL"), {"name": f"insights.{name}"}):
                    await conn.execute(
                        text(
                            f"CREATE TABLE insights.{name} PARTITION OF insights.{table} "
                            f"FOR VALUES FROM ('{lower}') TO ('{upper}')"
                        )
                    )
                    PARTITIONS.labels("created").inc()
            self._derived.add(name)

    async def drop_old_derived(self, today: date) -> list[str]:
        """Drop the derived partitions wholly older than each table's retention (months back from `today`)."""
        dropped = []
        async with self._engine.begin() as conn:
            for table, months in self._derived_retention.items():
                first = month_start(today)
                for _ in range(months - 1):
                    first = month_start(first - timedelta(days=1))
                cutoff = derived_partition(table, first)[0]
                rows = await conn.scalars(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = CAST(:parent AS regclass)"
                    ),
                    {"parent": f"insights.{table}"},
                )
                for name in rows.all():
                    if name < cutoff:
                        await conn.execute(text(f"DROP TABLE insights.{name}"))
                        PARTITIONS.labels("dropped").inc()
                        self._derived.discard(name)
                        dropped.append(name)
        return dropped

    def oldest_kept(self, now: datetime) -> date:
        """The first month whose raw samples are kept (UTC months: partitions are cut in UTC)."""
        first = month_start(now.astimezone(UTC).date())
        for _ in range(self._retention_months - 1):
            first = month_start(first - timedelta(days=1))
        return first

    async def maintain(self, now: datetime, ahead: int = 2) -> list[str]:
        """Create the next `ahead` months' partitions and drop raw partitions older than the retention."""
        this = month_start(now.astimezone(UTC).date())
        months = [this]
        for _ in range(ahead):
            months.append(month_start(months[-1] + timedelta(days=32)))
        dropped = []
        async with self._engine.begin() as conn:
            await self.ensure_partitions(conn, months)
            rows = await conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'insights.readings'::regclass"
                )
            )
            cutoff = partition_name(self.oldest_kept(now))
            for (name,) in rows:
                if name < cutoff:
                    await conn.execute(text(f"DROP TABLE insights.{name}"))
                    PARTITIONS.labels("dropped").inc()
                    dropped.append(name)
        self._partitions = {m for m in self._partitions if partition_name(m) >= cutoff}
        today = now.astimezone(self._tz).date()
        await self.ensure_derived([today, next_month(today), next_month(next_month(today))])
        return dropped + await self.drop_old_derived(today)

    # --- ingest ---------------------------------------------------------------------------------

    async def record(self, batch: ReadingBatch, topic: str = "") -> None:
        """Archive every register value of a batch (the kit acknowledges after this commits)."""
        oldest = datetime.combine(self.oldest_kept(datetime.now(UTC)), datetime.min.time(), UTC)
        meters: list[str] = []
        registers: list[str] = []
        times: list[datetime] = []
        values: list[Decimal] = []
        ids: list[str] = []
        for reading in batch.readings:
            if reading.sampled_at < oldest:
                TOO_OLD.inc(len(reading.registers))
                continue
            for register, value in reading.registers.items():
                meters.append(reading.meter_id)
                registers.append(register)
                times.append(reading.sampled_at)
                values.append(value)
                ids.append(str(reading.reading_id))
        if not meters:
            return
        async with self._engine.begin() as conn:
            await self.ensure_partitions(conn, [month_start(t.astimezone(UTC).date()) for t in times])
            await conn.execute(
                text(
                    "INSERT INTO insights.readings (meter_id, register, read_at, value, reading_id) "
                    "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:r AS text[]), CAST(:t AS timestamptz[]), "
                    "CAST(:v AS numeric[]), CAST(:i AS uuid[])) ON CONFLICT DO NOTHING"
                ),
                {"m": meters, "r": registers, "t": times, "v": values, "i": ids},
            )
        ARCHIVED.inc(len(meters))

    # --- derived: frozen values and hourly profiles ---------------------------------------------

    def local_midnight(self, day: date) -> datetime:
        return datetime.combine(day, datetime.min.time(), self._tz).astimezone(UTC)

    async def freeze_day(self, conn: AsyncConnection, day: date) -> int:
        """日冻结 at the local midnight starting `day`: each register's last sample at or before it (within a
        day before it, so a meter silent for longer has no frozen value rather than a stale one)."""
        at = self.local_midnight(day)
        result = await conn.execute(
            text(
                "INSERT INTO insights.frozen (meter_id, register, day, value, read_at, reading_id) "
                "SELECT DISTINCT ON (meter_id, register) meter_id, register, :day, value, read_at, reading_id "
                "FROM insights.readings WHERE read_at > :since AND read_at <= :at "
                "ORDER BY meter_id, register, read_at DESC "
                "ON CONFLICT (meter_id, register, day) DO UPDATE SET value = EXCLUDED.value, "
                "read_at = EXCLUDED.read_at, reading_id = EXCLUDED.reading_id"
            ),
            {"day": day, "since": at - timedelta(days=1), "at": at},
        )
        return result.rowcount or 0

    async def profile_day(self, conn: AsyncConnection, day: date) -> int:
        """The day's use per local hour for every meter read that day: the difference between the last
        samples of consecutive hours of its usage register. An hour is (h, h+1]: the sample taken on the
        hour closes the hour before it. A decrease (rollover, replacement) counts 0; the use of hours
        without a sample lands in the next hour with one."""
        start, end = self.local_midnight(day), self.local_midnight(day + timedelta(days=1))
        result = await conn.execute(
            text(
                """
                WITH last_of_hour AS (
                    SELECT DISTINCT ON (meter_id, hour) meter_id, hour, value
                    FROM (
                        SELECT meter_id, read_at, value,
                               date_trunc('hour', read_at - interval '1 microsecond') AS hour
                        FROM insights.readings
                        WHERE read_at > :since AND read_at <= :end AND register = ANY(:registers)
                    ) samples
                    ORDER BY meter_id, hour, read_at DESC
                ), deltas AS (
                    SELECT meter_id, hour,
                           greatest(value - lag(value) OVER (PARTITION BY meter_id ORDER BY hour), 0) AS q
                    FROM last_of_hour
                ), hours AS (
                    SELECT meter_id, extract(hour FROM hour AT TIME ZONE :tz)::int AS h, sum(q) AS q
                    FROM deltas WHERE hour >= :start AND q IS NOT NULL GROUP BY 1, 2
                )
                INSERT INTO insights.daily_profiles (meter_id, day, by_hour, hours_known)
                SELECT m.meter_id, :day, array_agg(coalesce(hours.q, 0) ORDER BY g.h), count(hours.q)
                FROM (SELECT DISTINCT meter_id FROM hours) m CROSS JOIN generate_series(0, 23) g(h)
                LEFT JOIN hours ON hours.meter_id = m.meter_id AND hours.h = g.h
                GROUP BY m.meter_id
                ON CONFLICT (meter_id, day) DO UPDATE SET by_hour = EXCLUDED.by_hour, hours_known = EXCLUDED.hours_known
                """
            ),
            {
                "since": start - timedelta(days=1),
                "start": start,
                "end": end,
                "day": day,
                "tz": str(self._tz),
                "registers": list(USAGE_REGISTERS.values()),
            },
        )
        return result.rowcount or 0

    async def roll_up_month(self, conn: AsyncConnection, day: date) -> int:
        """Recompute the month of `day` from its daily profiles (idempotent, whatever ran before)."""
        first = month_start(day)
        following = month_start(first + timedelta(days=32))
        result = await conn.execute(
            text(
                """
                INSERT INTO insights.monthly_profiles (meter_id, month, by_hour, days, total)
                SELECT meter_id, :month, array_agg(q ORDER BY h), max(days), sum(q) FROM (
                    SELECT meter_id, h, sum(by_hour[h + 1]) AS q, count(*) AS days
                    FROM insights.daily_profiles CROSS JOIN generate_series(0, 23) g(h)
                    WHERE day >= :first AND day < :following
                      AND meter_id IN (SELECT meter_id FROM insights.daily_profiles WHERE day = :day)
                    GROUP BY meter_id, h
                ) per_hour GROUP BY meter_id
                ON CONFLICT (meter_id, month) DO UPDATE SET by_hour = EXCLUDED.by_hour, days = EXCLUDED.days, total = EXCLUDED.total
                """
            ),
            {"month": f"{first:%Y-%m}", "first": first, "following": following, "day": day},
        )
        return result.rowcount or 0

    # --- queries --------------------------------------------------------------------------------

    async def raw_text(
        self, meters: Sequence[str], start: datetime, end: datetime, limit: int, *, csv: bool = False
    ) -> str:
        """The raw samples as the response's own text — a JSON array of rows, or CSV lines without the header —
        built by PostgreSQL: a meter's year is 8,760 rows per register, and decoding them into Python objects
        only to encode them again cost ten times the query. The rows come through the primary key's index
        (one index range per monthly partition), in (meter, register, read_at) order."""
        instant = "to_char(read_at AT TIME ZONE 'UTC', :instant)"  # a bind: text() would read ':MI' as one
        if csv:
            row = f"concat_ws(',', meter_id, register, {instant}, value::text, reading_id::text)"
            aggregate = f"coalesce(string_agg({row}, E'\\n' ORDER BY meter_id, register, read_at), '')"
        else:
            row = (
                "json_build_object('meter_id', meter_id, 'register_name', register, "
                f"'read_at', {instant}, 'value', value::text, 'reading_id', reading_id::text)"
            )
            aggregate = f"coalesce(json_agg({row} ORDER BY meter_id, register, read_at), '[]')::text"
        async with self._engine.connect() as conn:
            body = await conn.scalar(
                text(
                    f"SELECT {aggregate} FROM (SELECT meter_id, register, read_at, value, reading_id "
                    "FROM insights.readings WHERE meter_id = ANY(:meters) AND read_at >= :start AND read_at < :end "
                    "ORDER BY meter_id, register, read_at LIMIT :limit) rows"
                ),
                {"meters": list(meters), "start": start, "end": end, "limit": limit, "instant": ISO_UTC},
            )
        return str(body)

    async def frozen(self, meters: Sequence[str], first: date, last: date, monthly: bool) -> list[dict[str, Any]]:
        days = months_between(first, last) if monthly else None
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT meter_id, register, day, value, read_at, reading_id::text FROM insights.frozen "
                    "WHERE meter_id = ANY(:meters) AND day >= :first AND day <= :last "
                    + ("AND day = ANY(:days) " if monthly else "")
                    + "ORDER BY meter_id, register, day"
                ),
                {"meters": list(meters), "first": first, "last": last, "days": days}
                if monthly
                else {"meters": list(meters), "first": first, "last": last},
            )
            return [
                {
                    "meter_id": r.meter_id,
                    "register_name": r.register,
                    "kind": "month" if monthly else "day",
                    "frozen_at": self.local_midnight(r.day).astimezone(self._tz),
                    "value": r.value,
                    "read_at": r.read_at,
                    "reading_id": r.reading_id,
                }
                for r in rows
            ]
