"""Store-and-forward: every message the poller produces is first written to a local SQLite file (WAL) and
published from there in order, each row deleted only after the broker acknowledged it (QoS 1).

The collector must keep reading meters through a broker outage and a database outage alike, so the
store is a local file, not a table in PostgreSQL. SQLite is used from one dedicated thread, off the
event loop. The store is bounded: when it holds `max_rows` reading batches and periodic messages (poll
statistics), new ones are refused (counted and logged as errors) and the stored ones are kept — the oldest unsent readings are the ones
billing has not seen yet, and a meter's next successful poll after the outage carries its cumulative
register anyway, so refusing new rows loses resolution, never consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter, Gauge

from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.mqtt import MqttLink

log = logging.getLogger(__name__)
T = TypeVar("T")

DEPTH = Gauge("collector_store_depth_rows", "messages stored locally and not yet acknowledged by the broker")
READINGS_DEPTH = Gauge("collector_store_depth_readings", "readings stored locally and not yet published")
REFUSED = Counter("collector_store_refused_readings_total", "readings refused because the local store was full")
REFUSED_MESSAGES = Counter(
    "collector_store_refused_messages_total", "periodic messages (poll statistics) refused because the store was full"
)
FORWARDED = Counter("collector_store_forwarded_total", "messages published from the local store and deleted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    readings INTEGER NOT NULL DEFAULT 0,
    bounded INTEGER NOT NULL DEFAULT 0
)"""
# Rows the bound counts: reading batches, and periodic messages (poll statistics) that a long outage would pile up.
_BOUNDED = "(readings > 0 OR bounded = 1)"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    readings: int = 0  # how many readings the payload carries (0: a state event)
    bounded: bool = False  # a periodic message (poll statistics): counted against max_rows like a reading batch

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


class StoreFull(Exception):
    """The local store holds its maximum of reading batches."""


class LocalStore:
    """A durable FIFO of MQTT messages in one SQLite file; use as `async with LocalStore(path) as store`."""

    def __init__(self, path: Path, *, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
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
            if "bounded" not in {column[1] for column in db.execute("PRAGMA table_info(pending)")}:
                db.execute("ALTER TABLE pending ADD COLUMN bounded INTEGER NOT NULL DEFAULT 0")  # an older file
            rows, batches, readings = db.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {_BOUNDED}), coalesce(sum(readings), 0) FROM pending"
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
                with db:  # one transaction, one fsync
                    db.execute("BEGIN")
                    db.executemany(
                        "INSERT INTO pending (topic, payload, retain, readings, bounded) VALUES (?, ?, ?, ?, ?)",
                        [(m.topic, m.payload, int(m.retain), m.readings, int(m.bounded)) for m in accepted],
                    )

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
            rows = db.execute("SELECT id, topic, payload, retain FROM pending ORDER BY id LIMIT ?", (limit,))
            return [Pending(i, t, bytes(p), bool(r)) for i, t, p, r in rows]

        return await self._call(select)

    async def delete(self, ids: list[int]) -> None:
        def remove(db: sqlite3.Connection) -> tuple[int, int]:
            marks = ",".join("?" * len(ids))
            batches, readings = db.execute(
                f"SELECT count(*) FILTER (WHERE {_BOUNDED}), coalesce(sum(readings), 0) FROM pending "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchone()
            db.execute(f"DELETE FROM pending WHERE id IN ({marks})", ids)
            return int(batches), int(readings)

        batches, readings = await self._call(remove)
        self._batches -= batches
        self._readings -= readings
        self._rows -= len(ids)
        self._gauge()

    async def forward(self, mqtt: MqttLink, *, batch: int = 10) -> None:
        """Publish stored messages in order for ever; a row is deleted only once the broker acknowledged it."""
        while True:
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
