"""Rooms' occupancy as retained `RoomOccupancy` events: queued with every change of a room's lease or
meters (in the caller's transaction), published as dated transitions come due, republished on demand.

`loop` publishes the rooms whose dated lease or binding took effect since its last pass (at start:
over the day before). Every room is republished only on demand (`republish`, after a broker lost
its retained state), in chunks queued while the outbox is nearly empty, so it never delays the
balance events behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import MeterRef, RoomOccupancy, Utility

log = logging.getLogger(__name__)

REPUBLISH_CHUNK = 500
"""Rooms per transaction when every room's occupancy is republished; the next chunk is queued once
fewer than this many events wait in the outbox (live events are never queued behind more than two)."""
REPUBLISH_WAIT_SECONDS = 0.2
STARTUP_LOOKBACK = timedelta(days=1)
"""At start, dated transitions are looked up this far back (what took effect while billing was down)."""


class RoomOccupancies:
    """Queues, publishes and republishes rooms' occupancy."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._source = source

    async def queue(self, conn: AsyncConnection, room_ids: Iterable[str], at: datetime | None = None) -> int:
        """Queue each room's occupancy at `at` (default now) as a retained event, in the caller's transaction.

        The rooms are locked in a stable order first, so a change and a republish of the same room
        reach the outbox in the order they committed. The caller wakes the outbox after commit.
        """
        rooms = sorted(set(room_ids))
        if not rooms:
            return 0
        at = at or datetime.now(UTC)
        await conn.execute(
            text("SELECT 1 FROM billing.rooms WHERE room_id = ANY(:r) ORDER BY room_id FOR UPDATE"), {"r": rooms}
        )
        states = (
            await conn.execute(
                text(
                    "SELECT r.room_id, b.estate_id, r.created_at, l.lease_id, l.account_id, l.tenant_id, l.starts_at, "
                    "(SELECT max(e.ends_at) FROM billing.leases e WHERE e.room_id = r.room_id AND e.ends_at <= :at) "
                    "AS vacated_at FROM billing.rooms r JOIN billing.floors f USING (floor_id) "
                    "JOIN billing.buildings b USING (building_id) "
                    "LEFT JOIN billing.leases l ON l.room_id = r.room_id AND l.starts_at <= :at "
                    "AND (l.ends_at IS NULL OR l.ends_at > :at) WHERE r.room_id = ANY(:r) ORDER BY r.room_id"
                ),
                {"r": rooms, "at": at},
            )
        ).all()
        meters: dict[str, list[MeterRef]] = {}
        for row in await conn.execute(
            text(
                "SELECT room_id, meter_id, utility FROM billing.meter_bindings WHERE room_id = ANY(:r) "
                "AND (valid_from IS NULL OR valid_from <= :at) AND (valid_to IS NULL OR valid_to > :at) "
                "ORDER BY room_id, meter_id"
            ),
            {"r": rooms, "at": at},
        ):
            meters.setdefault(row.room_id, []).append(MeterRef(meter_id=row.meter_id, utility=Utility(row.utility)))
        events: list[tuple[str, Any, bool]] = []
        for state in states:
            leased = state.lease_id is not None
            since = state.starts_at if leased else (state.vacated_at or state.created_at)
            event = RoomOccupancy(
                source=self._source,
                room_id=state.room_id,
                estate_id=state.estate_id,
                leased=leased,
                since=since,
                lease_id=state.lease_id,
                account_id=state.account_id,
                tenant_id=state.tenant_id,
                meters=tuple(meters.get(state.room_id, ())),
            )
            events.append((topics.room_occupancy(state.room_id), event, True))
        await self._outbox.add_many(conn, events)
        return len(events)

    async def republish(self) -> int:
        """Queue every room's occupancy again (a fresh broker gets the retained state); returns the count."""
        count = 0
        after = ""
        while True:
            while await self._outbox.backlog(REPUBLISH_CHUNK) >= REPUBLISH_CHUNK:
                await asyncio.sleep(REPUBLISH_WAIT_SECONDS)  # other traffic first
            async with self._engine.begin() as conn:
                rooms = list(
                    (
                        await conn.execute(
                            text("SELECT room_id FROM billing.rooms WHERE room_id > :a ORDER BY room_id LIMIT :n"),
                            {"a": after, "n": REPUBLISH_CHUNK},
                        )
                    ).scalars()
                )
                count += await self.queue(conn, rooms)
            self._outbox.notify()
            if len(rooms) < REPUBLISH_CHUNK:
                return count
            after = rooms[-1]

    async def publish_transitions(self, since: datetime, until: datetime) -> int:
        """Queue the occupancy of rooms whose lease or meter binding took effect or ended in (since, until]."""
        async with self._engine.begin() as conn:
            rooms = (
                await conn.execute(
                    text(
                        "SELECT room_id FROM billing.leases WHERE starts_at > :s AND starts_at <= :u "
                        "UNION SELECT room_id FROM billing.leases WHERE ends_at > :s AND ends_at <= :u "
                        "UNION SELECT room_id FROM billing.meter_bindings WHERE room_id IS NOT NULL "
                        "AND valid_from > :s AND valid_from <= :u "
                        "UNION SELECT room_id FROM billing.meter_bindings WHERE room_id IS NOT NULL "
                        "AND valid_to > :s AND valid_to <= :u"
                    ),
                    {"s": since, "u": until},
                )
            ).scalars()
            count = await self.queue(conn, list(rooms), until)
        self._outbox.notify()
        return count

    async def loop(self, interval_seconds: float = 60.0) -> None:
        """Publish each room whose dated move-in, move-out or binding came due (from a day before start).

        Every room is not republished at start: with many rooms that would queue their retained
        messages ahead of the balance events on every restart (the broker keeps them anyway).
        """
        since = datetime.now(UTC) - STARTUP_LOOKBACK
        while True:
            until = datetime.now(UTC)
            try:
                await self.publish_transitions(since, until)
                since = until
            except Exception:
                log.exception("publishing room occupancy transitions failed; will retry")
            await asyncio.sleep(interval_seconds)
