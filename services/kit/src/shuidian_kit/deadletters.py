"""Dead letters: messages a consumer could not process, parked with the reason instead of dropped.

A message lands here when its payload does not validate or its handler keeps failing with an error
that retrying will not cure (see `shuidian_kit.retry`). It is acknowledged to the broker only once
it is parked, so nothing acknowledged is lost. Parking announces it (`DeadLetterParked`, through the
outbox in the same transaction), and alarm raises an alarm for the operators, who read the table
(or `GET /v1/dead-letters`), fix the cause and replay it through the same handler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_shared import topics
from shuidian_shared.messages import DeadLetterParked

if TYPE_CHECKING:  # the outbox publishes through the MQTT link, which parks through this module
    from shuidian_kit.outbox import Outbox

log = logging.getLogger(__name__)

PARKED = Counter("shuidian_mqtt_dead_letters_total", "messages parked in the dead-letter table", ["service", "reason"])


@dataclass(frozen=True)
class DeadLetter:
    id: int
    topic: str
    payload: bytes
    reason: str
    error: str
    attempts: int
    parked_at: datetime
    replayed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "payload": self.payload.decode("utf-8", errors="replace"),
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
            "parked_at": self.parked_at,
            "replayed_at": self.replayed_at,
        }


class DeadLetters:
    """The `<schema>.dead_letters` table of one service (created by the kit at start, like its outbox)."""

    def __init__(
        self, engine: AsyncEngine, schema: str, service: str, *, instance: str = "", outbox: Outbox | None = None
    ) -> None:
        self._engine = engine
        self._table = f'"{schema}".dead_letters'
        self._service = service
        self._instance = instance
        self._outbox = outbox  # announces each parked message (alarm raises an alarm for the operators)

    async def create_table(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {self._table} ("
                    "id bigserial PRIMARY KEY, topic text NOT NULL, payload bytea NOT NULL, "
                    "reason text NOT NULL, error text NOT NULL, attempts integer NOT NULL, "
                    "parked_at timestamptz NOT NULL DEFAULT now(), replayed_at timestamptz)"
                )
            )

    async def park(self, topic: str, payload: bytes, *, reason: str, error: str, attempts: int) -> int:
        """Store a message; raises if the database is unreachable (the caller then does not acknowledge)."""
        async with self._engine.begin() as conn:
            parked: int = (
                await conn.execute(
                    text(
                        f"INSERT INTO {self._table} (topic, payload, reason, error, attempts) "
                        "VALUES (:t, :p, :r, :e, :a) RETURNING id"
                    ),
                    {"t": topic, "p": payload, "r": reason, "e": error[:4000], "a": attempts},
                )
            ).scalar_one()
            if self._outbox is not None:
                notice = DeadLetterParked(
                    source=f"{self._service}-{self._instance}"[:64],
                    service=self._service,
                    instance=self._instance[:128],
                    letter_id=parked,
                    topic=topic[:512],
                    reason=reason,
                    error=error[:4000],
                )
                await self._outbox.add(conn, topics.dead_letters(self._service), notice)
        if self._outbox is not None:
            self._outbox.notify()
        PARKED.labels(self._service, reason).inc()
        log.error("parked message %d on %s as a dead letter (%s): %s", parked, topic, reason, error)
        return parked

    async def list(self, *, pending_only: bool, limit: int) -> list[DeadLetter]:
        where = "WHERE replayed_at IS NULL" if pending_only else ""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT id, topic, payload, reason, error, attempts, parked_at, replayed_at FROM {self._table} "
                    f"{where} ORDER BY id DESC LIMIT :n"
                ),
                {"n": limit},
            )
            return [_letter(row) for row in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, topic, payload, reason, error, attempts, parked_at, replayed_at "
                        f"FROM {self._table} WHERE id = :i"
                    ),
                    {"i": letter_id},
                )
            ).first()
        return _letter(row) if row is not None else None

    async def mark_replayed(self, letter_id: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(text(f"UPDATE {self._table} SET replayed_at = now() WHERE id = :i"), {"i": letter_id})


def _letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        topic=row.topic,
        payload=bytes(row.payload),
        reason=row.reason,
        error=row.error,
        attempts=row.attempts,
        parked_at=row.parked_at,
        replayed_at=row.replayed_at,
    )
