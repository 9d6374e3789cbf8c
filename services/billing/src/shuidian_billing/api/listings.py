"""Staff listings: estates, buildings, rooms, tenants and payments — filtered, sorted and paged
(limit/offset, the api-gateway's cursor carries the offset) in one indexed SQL statement each.

Every order ends on the primary key, so pages are stable; filters are conjunctive, so a building
or account outside the named estate lists nothing; an unknown estate is a 404, an unknown sort
field or a malformed filter a 422.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_billing.adapters.credits import CHANNEL_ACCOUNTS
from shuidian_billing.api.deps import RuntimeDep
from shuidian_billing.errors import BillingError, NotFound
from shuidian_shared.contracts import billing as contracts
from shuidian_shared.messages import BalanceLevel, Utility
from shuidian_shared.money import Money

router = APIRouter(tags=["listings"])  # included under /v1 by api.py

MAX_LIMIT = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip (the gateway's cursor)")]
SortParam = Annotated[
    str | None, Query(max_length=64, pattern=r"^-?[a-z_]{1,60}$", description="field; prefix `-` for descending")
]
Fragment = Annotated[str | None, Query(min_length=1, max_length=64, description="case-insensitive fragment")]
EstateFilter = Annotated[str | None, Query(min_length=1, max_length=64, description="only this estate")]
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


# --- estates and buildings ----------------------------------------------------------------------


class EstateOut(BaseModel):
    estate_id: str
    name: str
    shared_balance: bool = Field(description="水电一卡通: water and electricity share one balance")
    shared_basis: str = Field(description="how 公摊 is shared: area or equal")
    buildings: int
    rooms: int
    occupied_rooms: int = Field(description="rooms with a lease active now")
    created_at: datetime


class EstatePage(BaseModel):
    items: list[EstateOut]
    next_offset: int | None


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


@router.get("/estates", response_model=EstatePage, summary="小区列表 · Estates with their building and room counts")
async def estates(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    name: Fragment = None,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    order = order_by(sort, ESTATE_SORTS, "estate_id", "e.estate_id")
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(f"{ESTATES_SQL} {order} LIMIT :n OFFSET :o"),
            {"e": estate_id, "name": like(name), "n": limit + 1, "o": offset},
        )
        return page([r._asdict() for r in rows], limit, offset)


@router.get("/estates/{estate_id}", response_model=EstateOut, summary="小区 · An estate")
async def estate(estate_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(text(ESTATES_SQL), {"e": estate_id, "name": None})).first()
    if row is None:
        raise NotFound(f"没有小区 {estate_id} · no estate {estate_id}")
    return row._asdict()


class BuildingOut(BaseModel):
    building_id: str
    estate_id: str
    name: str
    floors: int
    rooms: int


class BuildingPage(BaseModel):
    items: list[BuildingOut]
    next_offset: int | None


BUILDING_SORTS = {"building_id": "b.building_id", "name": "b.name", "rooms": "rooms"}


@router.get(
    "/estates/{estate_id}/buildings", response_model=BuildingPage, summary="楼栋 · Buildings of an estate (404 unknown)"
)
async def buildings(
    estate_id: str, runtime: RuntimeDep, sort: SortParam = None, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    order = order_by(sort, BUILDING_SORTS, "building_id", "b.building_id")
    async with runtime.engine.connect() as conn:
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


# --- rooms ----------------------------------------------------------------------------------------


class RoomOut(BaseModel):
    room_id: str
    code: str
    estate_id: str
    building_id: str
    building_name: str
    floor_id: str
    floor: int = Field(description="the floor's level")
    area_m2: Decimal
    household_size: int
    occupied: bool = Field(description="a lease is active now")
    lease_id: str | None
    tenant_id: str | None
    tenant_name: str | None
    account_id: str | None
    level: BalanceLevel | None = Field(
        default=None, description="余额等级 · the household account's balance level (its worst purse); null when vacant"
    )


class RoomPage(BaseModel):
    items: list[RoomOut]
    next_offset: int | None


ROOM_SORTS = {
    "room_id": "r.room_id",
    "code": "r.code",
    "floor": "f.level",
    "area": "r.area_m2",
    "building_id": "f.building_id",
    "tenant_name": "t.name",
}


@router.get("/rooms", response_model=RoomPage, summary="房间 · Rooms with their current household")
async def rooms(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    building_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    floor: Annotated[int | None, Query(ge=-5, le=200, description="the floor's level")] = None,
    occupied: Annotated[bool | None, Query(description="only rooms with (true) or without (false) a lease now")] = None,
    level: Annotated[
        BalanceLevel | None, Query(description="only households whose account is at this balance level")
    ] = None,
    code: Fragment = None,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    order = order_by(sort, ROOM_SORTS, "code", "r.room_id")
    async with runtime.engine.connect() as conn:
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


# --- tenants --------------------------------------------------------------------------------------


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    phone: str
    rooms: list[str] = Field(description="codes of the rooms leased now (in the estate, when filtered)")
    accounts: list[str] = Field(description="accounts of those leases")


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_offset: int | None


TENANT_SORTS = {"tenant_id": "t.tenant_id", "name": "t.name", "phone": "t.phone"}
# Rooms of a lease and their estate; a tenant belongs to an estate through any lease there.
_LEASED = (
    "billing.leases l JOIN billing.rooms r USING (room_id) JOIN billing.floors f USING (floor_id) "
    "JOIN billing.buildings b USING (building_id)"
)


@router.get("/tenants", response_model=TenantPage, summary="租户 · Tenants, by estate, name or phone fragment")
async def tenants(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    name: Fragment = None,
    phone: Fragment = None,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    order = order_by(sort, TENANT_SORTS, "name", "t.tenant_id")
    async with runtime.engine.connect() as conn:
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


# --- payments -------------------------------------------------------------------------------------

PaymentState = Literal["paid", "partly_refunded", "refunded", "reversed"]


class PaymentListed(BaseModel):
    payment_id: uuid.UUID
    account_id: str
    estate_id: str | None
    channel: str
    amount: Money
    refunded: Money = Field(description="refunded so far")
    state: PaymentState = Field(description="paid, partly_refunded, refunded, or reversed (冲正)")
    reference: str | None
    txn_id: uuid.UUID
    balance_after: Money
    created_at: datetime


class PaymentPage(BaseModel):
    items: list[PaymentListed]
    next_offset: int | None


PAYMENT_SORTS = {"created_at": "created_at", "amount": "amount", "account_id": "account_id", "channel": "channel"}


@router.get(
    "/payments",
    response_model=PaymentPage,
    summary="缴费记录 · Payments by estate, account, channel, state and time, newest first",
)
async def payments(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    account_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    channel: Channel | None = None,
    state: PaymentState | None = None,
    start: Annotated[str | None, Query(description="inclusive: a local date or an aware instant")] = None,
    end: Annotated[str | None, Query(description="exclusive: a local date or an aware instant")] = None,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    tz = ZoneInfo(runtime.settings.timezone)
    since, until = instant(start, "start", tz), instant(end, "end", tz)
    if since is not None and until is not None and not since < until:
        raise ListingError("start must be before end", code="invalid_range")
    order = order_by(sort, PAYMENT_SORTS, "-created_at", "payment_id")
    async with runtime.engine.connect() as conn:
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


# --- single objects: what the gateway scopes by estate and checks If-Match against ----------------

_BINDING_SQL = (
    "SELECT mb.meter_id, mb.utility, mb.account_id, mb.room_id, mb.estate_id AS common_estate_id, "
    "coalesce(mb.estate_id, rb.estate_id, a.estate_id) AS estate_id, mb.valid_from, mb.valid_to "
    "FROM billing.meter_bindings mb LEFT JOIN billing.accounts a ON a.account_id = mb.account_id "
    "LEFT JOIN (billing.rooms r JOIN billing.floors f USING (floor_id) JOIN billing.buildings rb USING (building_id)) "
    "  ON r.room_id = mb.room_id "
)


@router.get(
    "/meters/{meter_id}/binding",
    response_model=contracts.MeterBindingOut,
    summary="表计绑定 · A meter's open binding and the estate it is in",
)
async def meter_binding(meter_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(text(_BINDING_SQL + "WHERE mb.meter_id = :m AND mb.valid_to IS NULL"), {"m": meter_id})
        ).first()
    if row is None:
        raise NotFound(f"表计 {meter_id} 未绑定 · meter {meter_id} is not bound")
    return row._asdict()


@router.get(
    "/rooms/{room_id}/meters/{meter_id}",
    response_model=contracts.RoomMeterOut,
    summary="房间表计 · A meter installed in a room (its open binding there)",
)
async def room_meter(room_id: str, meter_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text(_BINDING_SQL + "WHERE mb.meter_id = :m AND mb.room_id = :r AND mb.valid_to IS NULL"),
                {"m": meter_id, "r": room_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"房间 {room_id} 没有表计 {meter_id} · meter {meter_id} is not in room {room_id}")
    return {**row._asdict(), "room_id": room_id}


@router.get(
    "/estates/{estate_id}/meters",
    response_model=contracts.EstateMetersOut,
    summary="小区表计 · Meters bound now to an estate's rooms, accounts or common use",
)
async def estate_meters(estate_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
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


@router.get("/tenants/{tenant_id}", response_model=contracts.TenantRecordOut, summary="租户 · A tenant")
async def tenant(tenant_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT tenant_id, name, phone FROM billing.tenants WHERE tenant_id = :t"), {"t": tenant_id}
            )
        ).first()
    if row is None:
        raise NotFound(f"没有租户 {tenant_id} · no tenant {tenant_id}")
    return row._asdict()


@router.get("/buildings/{building_id}", response_model=contracts.BuildingRecordOut, summary="楼栋 · A building")
async def building(building_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT building_id, estate_id, name FROM billing.buildings WHERE building_id = :b"),
                {"b": building_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"没有楼栋 {building_id} · no building {building_id}")
    return row._asdict()


@router.get("/floors/{floor_id}", response_model=contracts.FloorRecordOut, summary="楼层 · A floor")
async def floor(floor_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
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


@router.get("/tariffs/{utility}", response_model=contracts.TariffOut, summary="价格 · A utility's tariff versions")
async def tariff(utility: Utility, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT tariff_id, effective_from, unit_price FROM billing.tariffs WHERE utility = :u "
                "ORDER BY effective_from, tariff_id"
            ),
            {"u": utility.value},
        )
        return {"utility": utility.value, "versions": [r._asdict() for r in rows]}


@router.get(
    "/tenants/{tenant_id}/leases",
    response_model=contracts.TenantLeasesOut,
    summary="租户租约 · Every lease of a tenant, ended ones too",
)
async def tenant_leases(tenant_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
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
