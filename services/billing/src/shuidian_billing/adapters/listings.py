"""Staff listings: estates, buildings, rooms, tenants and payments — filtered, sorted and paged
(limit/offset, the api-gateway's cursor carries the offset) in one indexed SQL statement each.

Every order ends on the primary key, so pages are stable; filters are conjunctive, so a building
or account outside the named estate lists nothing; an unknown estate is a 404, an unknown sort
field or a malformed filter a 422."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.credits import CHANNEL_ACCOUNTS
from shuidian_billing.errors import BillingError, NotFound
from shuidian_shared.messages import BalanceLevel, Utility

MAX_LIMIT = 1000
Channel = Literal["cash", "bank", "wechat", "alipay", "sandbox"]
assert set(Channel.__args__) == set(CHANNEL_ACCOUNTS)  # type: ignore[attr-defined]


class ListingError(BillingError):
    status_code = 422
    code = "invalid_listing_request"


def order_by(sort: str | None, columns: Mapping[str, str], default: str, key: str) -> str:
    """An ORDER BY clause from a whitelisted sort field (422 otherwise), ending on the unique `key`."""
    field = sort or default
    column = columns.get(field.lstrip("-"))
    if column is None:
        raise ListingError(
            f"不能按 {field.lstrip('-')} 排序 · cannot sort by {field.lstrip('-')}; one of: {', '.join(sorted(columns))}",
            code="invalid_sort",
        )
    direction = "DESC NULLS LAST" if field.startswith("-") else "ASC NULLS FIRST"
    return f"ORDER BY {column} {direction}, {key} {'DESC' if field.startswith('-') else 'ASC'}"


def like(fragment: str | None) -> str | None:
    """A LIKE pattern matching `fragment` anywhere, its wildcards taken literally."""
    if fragment is None:
        return None
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page(rows: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    """The page of `rows` (fetched with one extra row to tell whether another page follows)."""
    return {"items": rows[:limit], "next_offset": offset + limit if len(rows) > limit else None}


async def require_estate(conn: AsyncConnection, estate_id: str | None) -> None:
    if estate_id is None:
        return
    found = await conn.execute(text("SELECT 1 FROM billing.estates WHERE estate_id = :e"), {"e": estate_id})
    if found.first() is None:
        raise NotFound(f"没有小区 {estate_id} · no estate {estate_id}")


def instant(value: str | None, name: str, tz: ZoneInfo) -> datetime | None:
    """A query bound: a local date (its local midnight) or an aware ISO 8601 instant."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=tz).astimezone(UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise ListingError(f"{name}: not a date (YYYY-MM-DD) or an ISO 8601 instant", code="invalid_range") from err
    if parsed.tzinfo is None:
        raise ListingError(f"{name}: an instant needs its UTC offset", code="invalid_range")
    return parsed.astimezone(UTC)


ESTATES_SQL = """
SELECT e.estate_id, e.name, e.shared_balance, e.shared_basis, e.created_at,
       (SELECT count(*) FROM billing.buildings b WHERE b.estate_id = e.estate_id) AS buildings,
       coalesce(r.rooms, 0) AS rooms, coalesce(r.occupied, 0) AS occupied_rooms
FROM billing.estates e
LEFT JOIN LATERAL (
    SELECT count(*) AS rooms, count(occ.hit) AS occupied
    FROM billing.buildings b JOIN billing.floors f USING (building_id) JOIN billing.rooms rm USING (floor_id)
    LEFT JOIN LATERAL (SELECT 1 AS hit FROM billing.leases l WHERE l.room_id = rm.room_id
        AND l.starts_at <= now() AND (l.ends_at IS NULL OR l.ends_at > now()) LIMIT 1) occ ON true
    WHERE b.estate_id = e.estate_id
) r ON true
WHERE (CAST(:e AS text) IS NULL OR e.estate_id = :e) AND (CAST(:name AS text) IS NULL OR e.name ILIKE :name)
"""
ESTATE_SORTS = {"estate_id": "e.estate_id", "name": "e.name", "created_at": "e.created_at"}


async def estates(
    engine: AsyncEngine,
    *,
    estate_id: str | None = None,
    name: str | None = None,
    sort: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    order = order_by(sort, ESTATE_SORTS, "estate_id", "e.estate_id")
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f"{ESTATES_SQL} {order} LIMIT :n OFFSET :o"),
            {"e": estate_id, "name": like(name), "n": limit + 1, "o": offset},
        )
        return page([r._asdict() for r in rows], limit, offset)


async def estate(engine: AsyncEngine, *, estate_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(text(ESTATES_SQL), {"e": estate_id, "name": None})).first()
    if row is None:
        raise NotFound(f"没有小区 {estate_id} · no estate {estate_id}")
    return row._asdict()


BUILDING_SORTS = {"building_id": "b.building_id", "name": "b.name", "rooms": "rooms"}


async def buildings(
    engine: AsyncEngine, *, estate_id: str, sort: str | None = None, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    order = order_by(sort, BUILDING_SORTS, "building_id", "b.building_id")
    async with engine.connect() as conn:
        rows = [
            r._asdict()
            for r in await conn.execute(
                text(
                    "SELECT b.building_id, b.estate_id, b.name, count(DISTINCT f.floor_id) AS floors, "
                    "count(r.room_id) AS rooms FROM billing.buildings b LEFT JOIN billing.floors f USING (building_id) "
                    "LEFT JOIN billing.rooms r USING (floor_id) WHERE b.estate_id = :e "
                    f"GROUP BY b.building_id {order} LIMIT :n OFFSET :o"
                ),
                {"e": estate_id, "n": limit + 1, "o": offset},
            )
        ]
        if not rows:
            await require_estate(conn, estate_id)
    return page(rows, limit, offset)


ROOM_SORTS = {
    "room_id": "r.room_id",
    "code": "r.code",
    "floor": "f.level",
    "area": "r.area_m2",
    "building_id": "f.building_id",
    "tenant_name": "t.name",
}


async def rooms(
    engine: AsyncEngine,
    *,
    estate_id: str | None = None,
    building_id: str | None = None,
    floor: int | None = None,
    occupied: bool | None = None,
    level: BalanceLevel | None = None,
    code: str | None = None,
    sort: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    order = order_by(sort, ROOM_SORTS, "code", "r.room_id")
    async with engine.connect() as conn:
        rows = [
            r._asdict()
            for r in await conn.execute(
                text(
                    "SELECT r.room_id, r.code, b.estate_id, f.building_id, b.name AS building_name, r.floor_id, "
                    "f.level AS floor, r.area_m2, r.household_size, l.lease_id IS NOT NULL AS occupied, l.lease_id, "
                    "l.tenant_id, t.name AS tenant_name, l.account_id, a.level "
                    "FROM billing.rooms r JOIN billing.floors f USING (floor_id) JOIN billing.buildings b USING (building_id) "
                    "LEFT JOIN LATERAL (SELECT lease_id, tenant_id, account_id FROM billing.leases "
                    "  WHERE room_id = r.room_id AND starts_at <= now() AND (ends_at IS NULL OR ends_at > now()) "
                    "  ORDER BY starts_at DESC LIMIT 1) l ON true "
                    "LEFT JOIN billing.tenants t ON t.tenant_id = l.tenant_id "
                    "LEFT JOIN billing.accounts a ON a.account_id = l.account_id "
                    "WHERE (CAST(:e AS text) IS NULL OR b.estate_id = :e) "
                    "AND (CAST(:b AS text) IS NULL OR f.building_id = :b) "
                    "AND (CAST(:f AS int) IS NULL OR f.level = :f) "
                    "AND (CAST(:occ AS boolean) IS NULL OR (l.lease_id IS NOT NULL) = :occ) "
                    "AND (CAST(:lvl AS text) IS NULL OR a.level = :lvl) "
                    "AND (CAST(:code AS text) IS NULL OR r.code ILIKE :code) "
                    f"{order} LIMIT :n OFFSET :o"
                ),
                {
                    "e": estate_id,
                    "b": building_id,
                    "f": floor,
                    "occ": occupied,
                    "lvl": level.value if level is not None else None,
                    "code": like(code),
                    "n": limit + 1,
                    "o": offset,
                },
            )
        ]
        if not rows:
            await require_estate(conn, estate_id)
    return page(rows, limit, offset)


TENANT_SORTS = {"tenant_id": "t.tenant_id", "name": "t.name", "phone": "t.phone"}
# Rooms of a lease and their estate; a tenant belongs to an estate through any lease there.
_LEASED = (
    "billing.leases l JOIN billing.rooms r USING (room_id) JOIN billing.floors f USING (floor_id) "
    "JOIN billing.buildings b USING (building_id)"
)


async def tenants(
    engine: AsyncEngine,
    *,
    estate_id: str | None = None,
    name: str | None = None,
    phone: str | None = None,
    sort: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    order = order_by(sort, TENANT_SORTS, "name", "t.tenant_id")
    async with engine.connect() as conn:
        rows = [
            r._asdict()
            for r in await conn.execute(
                text(
                    "SELECT t.tenant_id, t.name, t.phone, coalesce(cur.rooms, '{}') AS rooms, "
                    "coalesce(cur.accounts, '{}') AS accounts FROM billing.tenants t "
                    "LEFT JOIN LATERAL (SELECT array_agg(r.code ORDER BY r.code) AS rooms, "
                    f"  array_agg(DISTINCT l.account_id) AS accounts FROM {_LEASED} "
                    "  WHERE l.tenant_id = t.tenant_id AND l.starts_at <= now() AND (l.ends_at IS NULL OR l.ends_at > now()) "
                    "  AND (CAST(:e AS text) IS NULL OR b.estate_id = :e)) cur ON true "
                    "WHERE (CAST(:e AS text) IS NULL OR EXISTS "
                    f"  (SELECT 1 FROM {_LEASED} WHERE l.tenant_id = t.tenant_id AND b.estate_id = :e)) "
                    "AND (CAST(:name AS text) IS NULL OR t.name ILIKE :name) "
                    "AND (CAST(:phone AS text) IS NULL OR t.phone LIKE :phone) "
                    f"{order} LIMIT :n OFFSET :o"
                ),
                {"e": estate_id, "name": like(name), "phone": like(phone), "n": limit + 1, "o": offset},
            )
        ]
        if not rows:
            await require_estate(conn, estate_id)
    return page(rows, limit, offset)


PaymentState = Literal["paid", "partly_refunded", "refunded", "reversed"]
PAYMENT_SORTS = {"created_at": "created_at", "amount": "amount", "account_id": "account_id", "channel": "channel"}


async def payments(
    engine: AsyncEngine,
    timezone: str,
    *,
    estate_id: str | None = None,
    account_id: str | None = None,
    channel: Channel | None = None,
    state: PaymentState | None = None,
    start: str | None = None,
    end: str | None = None,
    sort: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    since, until = instant(start, "start", tz), instant(end, "end", tz)
    if since is not None and until is not None and not since < until:
        raise ListingError("start must be before end", code="invalid_range")
    order = order_by(sort, PAYMENT_SORTS, "-created_at", "payment_id")
    async with engine.connect() as conn:
        rows = [
            r._asdict()
            for r in await conn.execute(
                text(
                    "SELECT * FROM (SELECT p.payment_id, p.account_id, a.estate_id, p.channel, p.amount, "
                    "coalesce(rf.refunded, 0.00) AS refunded, "
                    "CASE WHEN c.txn_id IS NOT NULL THEN 'reversed' WHEN rf.refunded >= p.amount THEN 'refunded' "
                    "     WHEN rf.refunded > 0 THEN 'partly_refunded' ELSE 'paid' END AS state, "
                    "p.reference, p.txn_id, p.balance_after, p.created_at "
                    "FROM billing.payments p JOIN billing.accounts a USING (account_id) "
                    "LEFT JOIN LATERAL (SELECT sum(amount) AS refunded FROM billing.refunds "
                    "  WHERE payment_id = p.payment_id) rf ON true "
                    "LEFT JOIN billing.corrections c ON c.reverses = p.txn_id "
                    "WHERE (CAST(:e AS text) IS NULL OR a.estate_id = :e) "
                    "AND (CAST(:a AS text) IS NULL OR p.account_id = :a) "
                    "AND (CAST(:c AS text) IS NULL OR p.channel = :c) "
                    "AND (CAST(:s AS timestamptz) IS NULL OR p.created_at >= :s) "
                    "AND (CAST(:u AS timestamptz) IS NULL OR p.created_at < :u)) listed "
                    f"WHERE (CAST(:state AS text) IS NULL OR state = :state) {order} LIMIT :n OFFSET :o"
                ),
                {
                    "e": estate_id,
                    "a": account_id,
                    "c": channel,
                    "s": since,
                    "u": until,
                    "state": state,
                    "n": limit + 1,
                    "o": offset,
                },
            )
        ]
        if not rows:
            await require_estate(conn, estate_id)
    return page(rows, limit, offset)


_BINDING_SQL = (
    "SELECT mb.meter_id, mb.utility, mb.account_id, mb.room_id, mb.estate_id AS common_estate_id, "
    "coalesce(mb.estate_id, rb.estate_id, a.estate_id) AS estate_id, mb.valid_from, mb.valid_to "
    "FROM billing.meter_bindings mb LEFT JOIN billing.accounts a ON a.account_id = mb.account_id "
    "LEFT JOIN (billing.rooms r JOIN billing.floors f USING (floor_id) JOIN billing.buildings rb USING (building_id)) "
    "  ON r.room_id = mb.room_id "
)


async def meter_binding(engine: AsyncEngine, *, meter_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text(_BINDING_SQL + "WHERE mb.meter_id = :m AND mb.valid_to IS NULL"), {"m": meter_id})
        ).first()
    if row is None:
        raise NotFound(f"表计 {meter_id} 未绑定 · meter {meter_id} is not bound")
    return row._asdict()


async def room_meter(engine: AsyncEngine, *, room_id: str, meter_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(_BINDING_SQL + "WHERE mb.meter_id = :m AND mb.room_id = :r AND mb.valid_to IS NULL"),
                {"m": meter_id, "r": room_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"房间 {room_id} 没有表计 {meter_id} · meter {meter_id} is not in room {room_id}")
    return {**row._asdict(), "room_id": room_id}


async def estate_meters(engine: AsyncEngine, *, estate_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        await require_estate(conn, estate_id)
        meters = (
            await conn.execute(
                text(
                    f"SELECT DISTINCT meter_id FROM ({_BINDING_SQL} WHERE mb.valid_to IS NULL) bound "
                    "WHERE estate_id = :e ORDER BY meter_id"
                ),
                {"e": estate_id},
            )
        ).scalars()
        return {"estate_id": estate_id, "meters": list(meters)}


async def tenant(engine: AsyncEngine, *, tenant_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT tenant_id, name, phone FROM billing.tenants WHERE tenant_id = :t"), {"t": tenant_id}
            )
        ).first()
    if row is None:
        raise NotFound(f"没有租户 {tenant_id} · no tenant {tenant_id}")
    return row._asdict()


async def building(engine: AsyncEngine, *, building_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT building_id, estate_id, name FROM billing.buildings WHERE building_id = :b"),
                {"b": building_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"没有楼栋 {building_id} · no building {building_id}")
    return row._asdict()


async def floor(engine: AsyncEngine, *, floor_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT f.floor_id, f.building_id, b.estate_id, f.level FROM billing.floors f "
                    "JOIN billing.buildings b USING (building_id) WHERE f.floor_id = :f"
                ),
                {"f": floor_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"没有楼层 {floor_id} · no floor {floor_id}")
    return row._asdict()


async def tariff(engine: AsyncEngine, *, utility: Utility) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT tariff_id, effective_from, unit_price FROM billing.tariffs WHERE utility = :u AND plan_id = 'default' "
                "ORDER BY effective_from, tariff_id"
            ),
            {"u": utility.value},
        )
        return {"utility": utility.value, "versions": [r._asdict() for r in rows]}


async def tenant_leases(engine: AsyncEngine, *, tenant_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        await require_tenant(conn, tenant_id)
        rows = await conn.execute(
            text(
                "SELECT lease_id, room_id, account_id, move_in, move_out FROM billing.leases WHERE tenant_id = :t "
                "ORDER BY move_in, lease_id"
            ),
            {"t": tenant_id},
        )
        return {"tenant_id": tenant_id, "leases": [r._asdict() for r in rows]}


async def require_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    found = await conn.execute(text("SELECT 1 FROM billing.tenants WHERE tenant_id = :t"), {"t": tenant_id})
    if found.first() is None:
        raise NotFound(f"没有租户 {tenant_id} · no tenant {tenant_id}")
