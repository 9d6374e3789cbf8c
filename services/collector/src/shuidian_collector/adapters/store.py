"""Store-and-forward: every message the poller produces is first written to a local SQLite file (WAL) and
published from there in order, each row deleted only after the broker acknowledged it (QoS 1).

The collector must keep reading meters through a broker outage and a database outage alike, so the
store is a local file, not a table in PostgreSQL. SQLite is used from one dedicated thread, off the
event loop. The store is bounded: when it holds `max_rows` reading batches and periodic messages (poll
statistics), new ones are refused (counted and logged as errors) and the stored ones are kept — the oldest unsent readings are the ones
billing has not seen yet, and a meter's next successful poll after the outage carries its cumulative
register anyway, so refusing new rows loses resolution, never consumption.

Each gateway's reading batches are numbered without gaps as they are stored: `epoch` names this
store file (made when the file is) and `sequence` counts the gateway's batches in it. A batch the
broker acknowledged is kept, marked sent, for `replay_seconds`: a consumer that sees a jump in the
numbers (a broker that lost what it had acknowledged) asks for the missing ones with a
`ReplayRequest`, and `replay` queues them to be published again, before anything newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter, Gauge

from shuidian_collector.errors import StoreFull
from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.mqtt import MqttLink
from shuidian_shared.messages import ReadingBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

DEPTH = Gauge("collector_store_depth_rows", "messages stored locally and not yet acknowledged by the broker")
READINGS_DEPTH = Gauge("collector_store_depth_readings", "readings stored locally and not yet published")
REFUSED = Counter("collector_store_refused_readings_total", "readings refused because the local store was full")
REFUSED_MESSAGES = Counter(
    "collector_store_refused_messages_total", "periodic messages (poll statistics) refused because the store was full"
)
FORWARDED = Counter("collector_store_forwarded_total", "messages published from the local store and deleted")
REPLAYED = Counter("collector_store_replayed_batches_total", "reading batches queued again on a consumer's request")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    readings INTEGER NOT NULL DEFAULT 0,
    bounded INTEGER NOT NULL DEFAULT 0
)"""
# Added after the first release: files made before get them on open.
_COLUMNS = {"bounded": "INTEGER NOT NULL DEFAULT 0", "gateway_id": "TEXT", "sequence": "INTEGER", "sent_at": "REAL"}
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS pending_unsent ON pending (id) WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS pending_streams ON pending (gateway_id, sequence) WHERE sequence IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS streams (gateway_id TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
# Rows the bound counts: unsent reading batches, and periodic messages (poll statistics) that a long outage would pile up.
_BOUNDED = "(readings > 0 OR bounded = 1)"
_UNSENT = "sent_at IS NULL"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    readings: int = 0  # how many readings the payload carries (0: a state event)
    bounded: bool = False  # a periodic message (poll statistics): counted against max_rows like a reading batch
    batch: ReadingBatch | None = None  # a reading batch to number in its gateway's stream (`payload` is unused)

    @property
    def limited(self) -> bool:
        """Refused when the store is full (reading batches and periodic messages; never state edges)."""
        return self.readings > 0 or self.bounded


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes
    retain: bool


class LocalStore:
    """A durable FIFO of MQTT messages in one SQLite file; use as `async with LocalStore(path) as store`."""

    def __init__(self, path: Path, *, max_rows: int, replay_seconds: float = 900.0) -> None:
        self.path = path
        self.max_rows = max_rows
        self.replay_seconds = replay_seconds
        self.epoch = ""  # read or made on open
        self._sequences: dict[str, int] = {}  # gateway → last sequence stored (used on the store's thread only)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-store")
        self._db: sqlite3.Connection | None = None
        self._rows = 0
        self._batches = 0  # rows that carry readings (and periodic messages): what max_rows bounds
        self._readings = 0
        self._wake = asyncio.Event()

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, db)

    async def __aenter__(self) -> LocalStore:
        def open_db() -> tuple[sqlite3.Connection, int, int, int]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a row acknowledged to the poller survives a power cut
            db.execute(_SCHEMA)
            present = {column[1] for column in db.execute("PRAGMA table_info(pending)")}
            for column, kind in _COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE pending ADD COLUMN {column} {kind}")
            for statement in _INDEXES:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (uuid.uuid4().hex[:16],))
            (self.epoch,) = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            self._sequences = dict(db.execute("SELECT gateway_id, last_sequence FROM streams"))
            rows, batches, readings = db.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {_BOUNDED}), coalesce(sum(readings), 0) FROM pending "
                f"WHERE {_UNSENT}"
            ).fetchone()
            return db, int(rows), int(batches), int(readings)

        loop = asyncio.get_running_loop()
        self._db, self._rows, self._batches, self._readings = await loop.run_in_executor(self._executor, open_db)
        self._gauge()
        if self._rows:
            log.info("local store %s holds %d unsent message(s); forwarding them first", self.path, self._rows)
            self._wake.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=False)

    @property
    def depth(self) -> int:
        return self._rows

    def _gauge(self) -> None:
        DEPTH.set(self._rows)
        READINGS_DEPTH.set(self._readings)

    async def append(
        self, topic: str, payload: bytes, *, retain: bool = False, readings: int = 0, bounded: bool = False
    ) -> None:
        """Store one message; see `append_many`."""
        await self.append_many([Message(topic, payload, retain, readings, bounded)])

    async def append_many(self, messages: Sequence[Message]) -> None:
        """Store messages in one transaction. Reading batches (readings > 0) and periodic messages are refused with
        StoreFull when the store is full, after the others are stored: state events are always taken (they are
        few, one per edge)."""
        full = self._batches >= self.max_rows
        accepted = [m for m in messages if not (full and m.limited)]
        refused = sum(m.readings for m in messages if full and m.limited)
        dropped = sum(1 for m in messages if full and m.limited and not m.readings)
        if accepted:

            def insert(db: sqlite3.Connection) -> None:
                sequences = dict(self._sequences)
                rows = []
                for m in accepted:
                    payload, gateway, sequence = m.payload, None, None
                    if m.batch is not None:
                        gateway = m.batch.gateway_id
                        sequence = sequences[gateway] = sequences.get(gateway, 0) + 1
                        numbered = m.batch.model_copy(update={"epoch": self.epoch, "sequence": sequence})
                        payload = numbered.model_dump_json().encode()
                    rows.append((m.topic, payload, int(m.retain), m.readings, int(m.bounded), gateway, sequence))
                with db:  # one transaction, one fsync
                    db.execute("BEGIN")
                    db.executemany(
                        "INSERT INTO pending (topic, payload, retain, readings, bounded, gateway_id, sequence) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    db.executemany(
                        "INSERT INTO streams (gateway_id, last_sequence) VALUES (?, ?) "
                        "ON CONFLICT (gateway_id) DO UPDATE SET last_sequence = excluded.last_sequence",
                        [(g, n) for g, n in sequences.items() if self._sequences.get(g) != n],
                    )
                self._sequences = sequences  # only once committed: a failed insert numbers nothing

            await self._call(insert)
            self._rows += len(accepted)
            self._batches += sum(1 for m in accepted if m.limited)
            self._readings += sum(m.readings for m in accepted)
            self._gauge()
            self._wake.set()
        if refused or dropped:
            REFUSED.inc(refused)
            REFUSED_MESSAGES.inc(dropped)
            raise StoreFull(
                f"local store full ({self._batches} reading batches and periodic messages): {refused} reading(s) "
                f"and {dropped} other message(s) refused"
            )

    async def peek(self, limit: int) -> list[Pending]:
        def select(db: sqlite3.Connection) -> list[Pending]:
            rows = db.execute(
                f"SELECT id, topic, payload, retain FROM pending WHERE {_UNSENT} ORDER BY id LIMIT ?", (limit,)
            )
            return [Pending(i, t, bytes(p), bool(r)) for i, t, p, r in rows]

        return await self._call(select)

    async def delete(self, ids: list[int]) -> None:
        """The broker has these: numbered reading batches are kept, marked sent, for replays; the rest go."""

        def remove(db: sqlite3.Connection) -> tuple[int, int]:
            marks = ",".join("?" * len(ids))
            batches, readings = db.execute(
                f"SELECT count(*) FILTER (WHERE {_BOUNDED}), coalesce(sum(readings), 0) FROM pending "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchone()
            with db:
                db.execute("BEGIN")
                db.execute(
                    f"UPDATE pending SET sent_at = ? WHERE id IN ({marks}) AND sequence IS NOT NULL",
                    [time.time(), *ids],
                )
                db.execute(f"DELETE FROM pending WHERE id IN ({marks}) AND sequence IS NULL", ids)
            return int(batches), int(readings)

        batches, readings = await self._call(remove)
        self._batches -= batches
        self._readings -= readings
        self._rows -= len(ids)
        self._gauge()

    async def replay(self, gateway_id: str, epoch: str, first: int, last: int) -> int:
        """Queue a gateway's sent batches `first`..`last` to be published again (before anything newer,
        as they keep their place); how many this store still held. Another store's epoch: none."""
        if epoch != self.epoch:
            return 0

        def unmark(db: sqlite3.Connection) -> tuple[int, int]:
            with db:
                db.execute("BEGIN")
                count, readings = db.execute(
                    "SELECT count(*), coalesce(sum(readings), 0) FROM pending WHERE gateway_id = ? "
                    "AND sequence BETWEEN ? AND ? AND sent_at IS NOT NULL",
                    (gateway_id, first, last),
                ).fetchone()
                db.execute(
                    "UPDATE pending SET sent_at = NULL WHERE gateway_id = ? AND sequence BETWEEN ? AND ? "
                    "AND sent_at IS NOT NULL",
                    (gateway_id, first, last),
                )
            return int(count), int(readings)

        count, readings = await self._call(unmark)
        if count:
            self._rows += count
            self._batches += count
            self._readings += readings
            self._gauge()
            self._wake.set()
            REPLAYED.inc(count)
        log.info("replay of %s batches %d..%d (epoch %s): %d still held", gateway_id, first, last, epoch, count)
        return count

    async def prune(self) -> int:
        """Forget sent batches older than the replay window."""

        def remove(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM pending WHERE sent_at IS NOT NULL AND sent_at < ?", (time.time() - self.replay_seconds,)
            )
            return cursor.rowcount

        return await self._call(remove)

    async def forward(self, mqtt: MqttLink, *, batch: int = 10) -> None:
        """Publish stored messages in order for ever; a row is deleted only once the broker acknowledged it."""
        pruned_at = time.monotonic()
        while True:
            if time.monotonic() - pruned_at >= min(60.0, self.replay_seconds):
                await self.prune()
                pruned_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # not wait_for: it can swallow a cancellation on Python 3.11
                    await self._wake.wait()
            self._wake.clear()
            try:
                while rows := await self.peek(batch):
                    # Started in order, so the client sends them in order; awaited together for throughput.
                    await asyncio.gather(*(mqtt.publish(r.topic, r.payload, retain=r.retain) for r in rows))
                    await self.delete([r.id for r in rows])
                    FORWARDED.inc(len(rows))
            except MqttUnavailable as err:
                log.warning("local store waits for the broker (%d unsent): %s", self._rows, err)
                await asyncio.sleep(1.0)
