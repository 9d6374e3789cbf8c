"""What each meter belongs to (gateway, account, model, estate, building, room, tenant).

Alarm does not own premises: billing and the collector do. This table is a copy filled through
alarm's API (the devstack seeds it), used to scope rules, to put an alarm in its estate and room,
and to route notifications to the right tenant only.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_alarm.domain.scopes import ScopeTarget
from shuidian_alarm.domain.targets import Placement, Target

_COLUMNS = ("meter_id", "gateway_id", "account_id", "model", "estate", "building", "room", "tenant_id")


async def upsert(conn: AsyncConnection, targets: list[Target]) -> None:
    if not targets:
        return
    casts = ", ".join(f"CAST(:{c} AS text[])" for c in _COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
    await conn.execute(
        text(
            f"INSERT INTO alarm.targets ({', '.join(_COLUMNS)}) SELECT * FROM unnest({casts}) "
            f"ON CONFLICT (meter_id) DO UPDATE SET {updates}, updated_at = now()"
        ),
        {c: [getattr(t, c) for t in targets] for c in _COLUMNS},
    )


async def by_meter(conn: AsyncConnection, meter_ids: list[str]) -> dict[str, Target]:
    rows = await conn.execute(
        text(f"SELECT {', '.join(_COLUMNS)} FROM alarm.targets WHERE meter_id = ANY(:m)"), {"m": meter_ids}
    )
    return {row.meter_id: Target(**row._asdict()) for row in rows}


async def gateway_scope(conn: AsyncConnection, gateway_id: str) -> ScopeTarget:
    """A gateway sits where its meters are (estate and building of any one of them)."""
    row = (
        await conn.execute(
            text("SELECT estate, building FROM alarm.targets WHERE gateway_id = :g ORDER BY meter_id LIMIT 1"),
            {"g": gateway_id},
        )
    ).first()
    return ScopeTarget() if row is None else ScopeTarget(estate_id=row.estate, building_id=row.building)


async def placements(conn: AsyncConnection, source_ids: list[str]) -> dict[str, Placement]:
    """Placement of each source, looked up as a meter, else a gateway, else an account (a target naming it, else
    the room its lease holds); unknown ones are absent."""
    found: dict[str, Placement] = {}
    # Indexed lookups rather than one join on OR, which would scan the whole table.
    columns = "t.meter_id, t.gateway_id, t.estate, t.building, t.room, t.tenant_id"
    rows = await conn.execute(
        text(
            f"SELECT DISTINCT ON (s) * FROM ("
            f"SELECT t.meter_id AS s, 0 AS kind, {columns} FROM alarm.targets t WHERE t.meter_id = ANY(:s) "
            f"UNION ALL SELECT t.gateway_id, 1, {columns} FROM alarm.targets t WHERE t.gateway_id = ANY(:s) "
            f"UNION ALL SELECT t.account_id, 2, {columns} FROM alarm.targets t WHERE t.account_id = ANY(:s) "
            # An account no target names: the room its lease holds now, as billing's RoomOccupancy says.
            "UNION ALL SELECT o.account_id, 3, NULL, NULL, o.estate_id, NULL, o.room_id, o.tenant_id "
            "FROM alarm.room_occupancy o WHERE o.account_id = ANY(:s)"
            ") found ORDER BY s, kind, meter_id"
        ),
        {"s": source_ids},
    )
    for row in rows:
        if row.kind == 0:
            found[row.s] = Placement(
                meter_id=row.meter_id,
                gateway_id=row.gateway_id,
                estate=row.estate,
                building=row.building,
                room=row.room,
                tenant_id=row.tenant_id,
            )
        elif row.kind == 1:
            found[row.s] = Placement(gateway_id=row.gateway_id, estate=row.estate, building=row.building)
        else:  # an account: the household's room and tenant
            found[row.s] = Placement(estate=row.estate, building=row.building, room=row.room, tenant_id=row.tenant_id)
    return found
