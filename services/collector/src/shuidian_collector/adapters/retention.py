"""Retention of the online/offline edges (`collector.online_edges`), which polling appends to for ever.

Edges older than the cutoff (now − `COLLECTOR_ONLINE_EDGES_RETENTION_DAYS`) are deleted, except each meter's newest
edge at or before the cutoff: availability over a window reads the state each meter was in when the window opens
from the last edge at or before its start (`reports.device_online_report`), so that edge is what keeps every window
starting at or after the cutoff exact. A meter that has not changed state for years keeps one old edge; that is the
price of knowing it was online all along.

Deletes go in bounded batches, one short transaction each, and one replica at a time: each batch takes a
transaction advisory lock first and the round stops when another replica holds it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# Specific to this job, so it never waits on (or blocks) another advisory lock of the platform.
LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('collector.online_edges.retention'))"
BATCH = 5_000  # rows deleted per transaction: short row locks, bounded WAL per commit
INTERVAL_SECONDS = 3600.0  # the cutoff moves by an hour between rounds; nothing needs it finer

# One batch. Candidates are walked along the (at) index from the cursor `after` on (inclusive: rows kept at that
# instant are simply seen again), so kept edges are read once per round, not once per batch. An edge goes when a
# later edge of the same meter is also at or before the cutoff (a probe of the (meter_id, at) index); ties in `at`
# are broken by id, as the report does, so exactly one edge per meter stays.
_PRUNE_BATCH = """
WITH doomed AS (
    SELECT e.id, e.at FROM collector.online_edges e
    WHERE e.at < :cutoff AND e.at >= :after
      AND EXISTS (
          SELECT 1 FROM collector.online_edges later
          WHERE later.meter_id = e.meter_id AND later.at >= e.at AND later.at <= :cutoff
            AND (later.at > e.at OR later.id > e.id))
    ORDER BY e.at
    LIMIT :n
), gone AS (
    DELETE FROM collector.online_edges d USING doomed WHERE d.id = doomed.id RETURNING d.id
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT max(at) FROM doomed) AS reached
"""


async def prune_batch(
    engine: AsyncEngine, cutoff: datetime, after: datetime, limit: int = BATCH
) -> tuple[int, datetime] | None:
    """Delete at most `limit` prunable edges at or after `after`, in one transaction.

    Returns (rows deleted, where the next batch starts), or None when another replica holds the lock.
    """
    async with engine.begin() as conn:
        if not (await conn.execute(text(LOCK))).scalar_one():
            return None
        row = (await conn.execute(text(_PRUNE_BATCH), {"cutoff": cutoff, "after": after, "n": limit})).one()
    return int(row.deleted), row.reached or after


async def prune_online_edges(engine: AsyncEngine, cutoff: datetime, batch: int = BATCH) -> int | None:
    """Delete the edges older than `cutoff` but each meter's newest at or before it, batch by batch.

    Returns the rows deleted, or None when another replica was pruning (this round is then left to it).
    """
    deleted = 0
    after = datetime.min.replace(tzinfo=UTC)
    while True:
        result = await prune_batch(engine, cutoff, after, batch)
        if result is None:
            log.info("online edges: another replica is pruning; %d row(s) deleted before it took over", deleted)
            return None
        count, after = result
        deleted += count
        if count < batch:
            break
    log.info("online edges: deleted %d row(s) older than %s", deleted, cutoff.isoformat())
    return deleted


async def run(engine: AsyncEngine, retention_days: int, interval: float = INTERVAL_SECONDS) -> None:
    """Housekeeping loop: prune at start, then every `interval` seconds; a failed round is retried next time."""
    while True:
        try:
            await prune_online_edges(engine, datetime.now(UTC) - timedelta(days=retention_days))
        except Exception:  # the database may be away: the service carries on, the next round catches up
            log.exception("online edges: pruning failed; retrying in %s s", interval)
        await asyncio.sleep(interval)
