"""Rooms' occupancy from billing (`RoomOccupancy`, retained per room) → each meter's lease status.

Billing republishes a room's occupancy on every move-in, move-out and meter (re)binding. The newest message of
each room is kept in `alarm.room_occupancy`; a meter's room is the newest occupancy that lists it, and a meter
that no room lists any more supplies no room. Every replica receives every message (a retained topic is not
shared); one transaction at a time takes them in, so the verdicts never race, and a message already taken in
(same id, or older than the room's newest) changes nothing.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_alarm.domain.observations import LeaseStatus
from shuidian_shared.messages import RoomOccupancy

# One lock for every occupancy transaction (rare: move-ins, move-outs, bindings, and retained ones at start).
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('alarm.room_occupancy'))"


async def record(conn: AsyncConnection, occupancy: RoomOccupancy) -> list[str] | None:
    """Take in a room's occupancy; the meters whose status it may change (listed before or now), or None when
    the message is not newer than what the room already holds."""
    await conn.execute(text(_LOCK))
    held = (
        await conn.execute(
            text("SELECT occurred_at, message_id, meters FROM alarm.room_occupancy WHERE room_id = :r"),
            {"r": occupancy.room_id},
        )
    ).first()
    if held is not None and (held.message_id == occupancy.message_id or held.occurred_at > occupancy.occurred_at):
        return None
    meters = sorted({m.meter_id for m in occupancy.meters})
    await conn.execute(
        text(
            "INSERT INTO alarm.room_occupancy (room_id, estate_id, leased, since, occurred_at, message_id, meters, "
            "account_id, tenant_id) VALUES (:r, :e, :l, :s, :o, :m, CAST(:meters AS text[]), :a, :t) "
            "ON CONFLICT (room_id) DO UPDATE SET "
            "estate_id = EXCLUDED.estate_id, leased = EXCLUDED.leased, since = EXCLUDED.since, "
            "occurred_at = EXCLUDED.occurred_at, message_id = EXCLUDED.message_id, meters = EXCLUDED.meters, "
            "account_id = EXCLUDED.account_id, tenant_id = EXCLUDED.tenant_id"
        ),
        {
            "r": occupancy.room_id,
            "e": occupancy.estate_id,
            "l": occupancy.leased,
            "s": occupancy.since,
            "o": occupancy.occurred_at,
            "m": occupancy.message_id,
            "meters": meters,
            "a": occupancy.account_id if occupancy.leased else None,
            "t": occupancy.tenant_id if occupancy.leased else None,
        },
    )
    if occupancy.leased and occupancy.account_id is not None:
        # Billing announces a new household's balance as soon as the lease creates its account, so an alarm about
        # the account may be raised before this message arrives: an open one still unplaced is placed now.
        await conn.execute(
            text(
                "UPDATE alarm.alarms SET estate = :e, room = :r, tenant_id = :t, updated_at = now() "
                "WHERE source_id = :a AND state <> 'cleared' AND estate IS NULL"
            ),
            {"e": occupancy.estate_id, "r": occupancy.room_id, "t": occupancy.tenant_id, "a": occupancy.account_id},
        )
    return sorted({*meters, *(held.meters if held is not None else ())})


async def statuses(conn: AsyncConnection, meter_ids: list[str], occupancy: RoomOccupancy) -> list[LeaseStatus]:
    """Each meter's lease status now: from the newest occupancy listing it, else unbound as of this message."""
    rows = await conn.execute(
        text(
            "SELECT DISTINCT ON (m) m, room_id, leased, since, occurred_at FROM alarm.room_occupancy, unnest(meters) m "
            "WHERE meters && CAST(:ids AS text[]) AND m = ANY(CAST(:ids AS text[])) "
            "ORDER BY m, occurred_at DESC, room_id"
        ),
        {"ids": meter_ids},
    )
    found = {
        row.m: LeaseStatus(meter_id=row.m, room_id=row.room_id, leased=row.leased, since=row.since, at=row.occurred_at)
        for row in rows
    }
    unbound = [
        LeaseStatus(meter_id=m, room_id=None, leased=None, at=occupancy.occurred_at)
        for m in meter_ids
        if m not in found
    ]
    return [*found.values(), *unbound]
