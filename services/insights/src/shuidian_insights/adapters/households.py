"""Households as insights knows them: billing's retained room occupancy (room, estate, account, meters)
and the room's area, size and building read from billing's API for the rooms that lack them."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_shared.contracts.billing import RoomDetailOut
from shuidian_shared.messages import RoomOccupancy

log = logging.getLogger(__name__)


class Households:
    def __init__(self, engine: AsyncEngine, billing: httpx.AsyncClient | None) -> None:
        self._engine = engine
        self._billing = billing
        self._unknown_rooms: set[str] = set()  # billing answered 404: not asked again by this process

    async def on_occupancy(self, room: RoomOccupancy, topic: str = "") -> None:
        """Newest `since` wins; a vacant room keeps its last household's meters for history."""
        if room.account_id is None:
            async with self._engine.begin() as conn:
                await conn.execute(
                    text("UPDATE insights.households SET leased = false WHERE room_id = :room AND since <= :since"),
                    {"room": room.room_id, "since": room.since},
                )
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO insights.households (account_id, estate_id, room_id, tenant_id, leased, since) "
                    "VALUES (:account, :estate, :room, :tenant, :leased, :since) "
                    "ON CONFLICT (account_id) DO UPDATE SET estate_id = EXCLUDED.estate_id, room_id = EXCLUDED.room_id, "
                    "tenant_id = EXCLUDED.tenant_id, leased = EXCLUDED.leased, since = EXCLUDED.since "
                    "WHERE insights.households.since <= EXCLUDED.since"
                ),
                {
                    "account": room.account_id,
                    "estate": room.estate_id,
                    "room": room.room_id,
                    "tenant": room.tenant_id,
                    "leased": room.leased,
                    "since": room.since,
                },
            )
            for meter in room.meters:
                await conn.execute(
                    text(
                        "INSERT INTO insights.household_meters (meter_id, account_id, room_id, utility) "
                        "VALUES (:meter, :account, :room, :utility) ON CONFLICT (meter_id) DO UPDATE SET "
                        "account_id = EXCLUDED.account_id, room_id = EXCLUDED.room_id, utility = EXCLUDED.utility"
                    ),
                    {
                        "meter": meter.meter_id,
                        "account": room.account_id,
                        "room": room.room_id,
                        "utility": meter.utility,
                    },
                )

    async def refresh_rooms(self, limit: int = 500) -> int:
        """Read area, household size and building from billing for households that lack them; billing being
        away only postpones this (the comparison waits for a room's area), it never stops the nightly job."""
        if self._billing is None:
            return 0
        async with self._engine.connect() as conn:
            rooms = (
                await conn.scalars(
                    text(
                        "SELECT DISTINCT room_id FROM insights.households WHERE area_m2 IS NULL "
                        "AND NOT room_id = ANY(:unknown) LIMIT :n"
                    ),
                    {"n": limit, "unknown": sorted(self._unknown_rooms)},
                )
            ).all()
        done = 0
        for room_id in rooms:
            try:
                response = await self._billing.get(f"/v1/rooms/{room_id}")
            except httpx.HTTPError as err:
                log.warning("room details from billing postponed: %s", err)
                return done
            if response.status_code != 200:
                log.warning("room %s: billing answered %s", room_id, response.status_code)
                if response.status_code == 404:
                    self._unknown_rooms.add(room_id)
                continue
            detail = RoomDetailOut.model_validate_json(response.content)
            await self.set_room(room_id, detail.area_m2, detail.household_size, detail.building_id)
            done += 1
        return done

    async def set_room(self, room_id: str, area_m2: Decimal, household_size: int, building_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE insights.households SET area_m2 = :area, household_size = :size, building_id = :building "
                    "WHERE room_id = :room"
                ),
                {"area": area_m2, "size": household_size, "building": building_id, "room": room_id},
            )

    async def get(self, account_id: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM insights.households WHERE account_id = :a"), {"a": account_id})
            ).first()
            return dict(row._mapping) if row else None

    async def meters_of(self, account_id: str) -> dict[str, str]:
        """utility → meter of a household."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT utility, meter_id FROM insights.household_meters WHERE account_id = :a ORDER BY meter_id"),
                {"a": account_id},
            )
            return {r.utility: r.meter_id for r in rows}

    async def meters_in(self, *, room_id: str | None = None, building_id: str | None = None) -> list[str]:
        async with self._engine.connect() as conn:
            if room_id is not None:
                rows = await conn.scalars(
                    text("SELECT meter_id FROM insights.household_meters WHERE room_id = :r ORDER BY 1"), {"r": room_id}
                )
            else:
                rows = await conn.scalars(
                    text(
                        "SELECT m.meter_id FROM insights.household_meters m JOIN insights.households h "
                        "ON h.room_id = m.room_id WHERE h.building_id = :b ORDER BY 1"
                    ),
                    {"b": building_id},
                )
            return list(rows.all())
