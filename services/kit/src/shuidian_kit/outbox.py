"""Transactional outbox: events are written in the same transaction as the state they describe and
published only after commit, so a crash or a broker outage never loses or invents one."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Gauge
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.mqtt import MqttLink

log = logging.getLogger(__name__)

_BUSY_RETRY_SECONDS = 0.05
DEPTH = Gauge("shuidian_outbox_depth", "events committed but not yet published", ["service"])


def outbox_ddl(schema: str) -> str:
    """DDL for a schema's outbox table (used by each service's first migration)."""
    return f"""
    CREATE TABLE "{schema}".outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        payload bytea NOT NULL,
        retain boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now()
    )"""


class Outbox:
    """Queue events inside a transaction with `add`, call `notify()` after commit; `run()` publishes."""

    def __init__(self, engine: AsyncEngine, mqtt: MqttLink, schema: str, *, batch: int = 500) -> None:
        self._engine = engine
        self._mqtt = mqtt
        self._table = f'"{schema}".outbox'
        self._lock_key = f"outbox:{schema}"
        self._batch = batch
        self._wake = asyncio.Event()
        self._service = mqtt.service

    async def add(self, conn: AsyncConnection, topic: str, message: BaseModel, *, retain: bool = False) -> None:
        await self.add_many(conn, [(topic, message, retain)])

    async def add_many(self, conn: AsyncConnection, events: list[tuple[str, BaseModel, bool]]) -> None:
        if not events:
            return
        await conn.execute(
            text(
                f"INSERT INTO {self._table} (topic, payload, retain) "
                "SELECT * FROM unnest(CAST(:t AS text[]), CAST(:p AS bytea[]), CAST(:r AS boolean[]))"
            ),
            {
                "t": [topic for topic, _, _ in events],
                "p": [message.model_dump_json().encode() for _, message, _ in events],
                "r": [retain for _, _, retain in events],
            },
        )

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            try:
                while await self._drain_once():
                    pass
            except MqttUnavailable as err:
                log.warning("outbox waits for the broker: %s", err)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)

    async def backlog(self, limit: int) -> int:
        """Events committed and not yet published, counted up to `limit` (never a full scan)."""
        async with self._engine.connect() as conn:
            count: int = (
                await conn.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {self._table} LIMIT :n) d"), {"n": limit})
            ).scalar_one()
        return count

    async def _drain_once(self) -> bool:
        """Publish one batch in id order; True if there may be more.

        One drainer at a time per outbox (across replicas): two publishing consecutive batches at
        once could put an older retained message on the broker after a newer one.
        """
        async with self._engine.begin() as conn:
            if not (
                await conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": self._lock_key})
            ).scalar_one():
                await asyncio.sleep(_BUSY_RETRY_SECONDS)  # another replica is draining: look again shortly
                return True
            rows = (
                await conn.execute(
                    text(
                        f"SELECT id, topic, payload, retain FROM {self._table} "
                        "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": self._batch},
                )
            ).all()
            if not rows:
                DEPTH.labels(self._service).set(0)
                return False
            # Started in order, so the client sends them in order; awaited together for throughput.
            await asyncio.gather(
                *(self._mqtt.publish(row.topic, bytes(row.payload), retain=row.retain) for row in rows)
            )
            await conn.execute(
                text(f"DELETE FROM {self._table} WHERE id = ANY(:ids)"), {"ids": [row.id for row in rows]}
            )
            # Bounded count: the gauge says "10000" for "at least that many", never a full scan.
            depth = await conn.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {self._table} LIMIT 10000) d"))
            DEPTH.labels(self._service).set(depth.scalar_one())
        return len(rows) == self._batch
