"""HTTP routes of listings: parse, call `adapters.listings`, answer (the queries live there)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from shuidian_billing.adapters import listings as queries
from shuidian_billing.adapters.listings import MAX_LIMIT, Channel, PaymentState
from shuidian_billing.api.deps import RuntimeDep
from shuidian_shared.contracts import billing as contracts
from shuidian_shared.messages import BalanceLevel, Utility
from shuidian_shared.money import Money

router = APIRouter(tags=["listings"])  # included under /v1 by api/core.py
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip (the gateway's cursor)")]
SortParam = Annotated[
    str | None, Query(max_length=64, pattern=r"^-?[a-z_]{1,60}$", description="field; prefix `-` for descending")
]
Fragment = Annotated[str | None, Query(min_length=1, max_length=64, description="case-insensitive fragment")]
EstateFilter = Annotated[str | None, Query(min_length=1, max_length=64, description="only this estate")]


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


@router.get("/estates", response_model=EstatePage, summary="小区列表 · Estates with their building and room counts")
async def estates(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    name: Fragment = None,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await queries.estates(runtime.engine, estate_id=estate_id, name=name, sort=sort, limit=limit, offset=offset)


@router.get("/estates/{estate_id}", response_model=EstateOut, summary="小区 · An estate")
async def estate(estate_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.estate(runtime.engine, estate_id=estate_id)


class BuildingOut(BaseModel):
    building_id: str
    estate_id: str
    name: str
    floors: int
    rooms: int


class BuildingPage(BaseModel):
    items: list[BuildingOut]
    next_offset: int | None


@router.get(
    "/estates/{estate_id}/buildings", response_model=BuildingPage, summary="楼栋 · Buildings of an estate (404 unknown)"
)
async def buildings(
    estate_id: str, runtime: RuntimeDep, sort: SortParam = None, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    return await queries.buildings(runtime.engine, estate_id=estate_id, sort=sort, limit=limit, offset=offset)


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
    return await queries.rooms(
        runtime.engine,
        estate_id=estate_id,
        building_id=building_id,
        floor=floor,
        occupied=occupied,
        level=level,
        code=code,
        sort=sort,
        limit=limit,
        offset=offset,
    )


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    phone: str
    rooms: list[str] = Field(description="codes of the rooms leased now (in the estate, when filtered)")
    accounts: list[str] = Field(description="accounts of those leases")


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_offset: int | None


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
    return await queries.tenants(
        runtime.engine, estate_id=estate_id, name=name, phone=phone, sort=sort, limit=limit, offset=offset
    )


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
    return await queries.payments(
        runtime.engine,
        timezone=runtime.settings.timezone,
        estate_id=estate_id,
        account_id=account_id,
        channel=channel,
        state=state,
        start=start,
        end=end,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/meters/{meter_id}/binding",
    response_model=contracts.MeterBindingOut,
    summary="表计绑定 · A meter's open binding and the estate it is in",
)
async def meter_binding(meter_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.meter_binding(runtime.engine, meter_id=meter_id)


@router.get(
    "/rooms/{room_id}/meters/{meter_id}",
    response_model=contracts.RoomMeterOut,
    summary="房间表计 · A meter installed in a room (its open binding there)",
)
async def room_meter(room_id: str, meter_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.room_meter(runtime.engine, room_id=room_id, meter_id=meter_id)


@router.get(
    "/estates/{estate_id}/meters",
    response_model=contracts.EstateMetersOut,
    summary="小区表计 · Meters bound now to an estate's rooms, accounts or common use",
)
async def estate_meters(estate_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.estate_meters(runtime.engine, estate_id=estate_id)


@router.get("/tenants/{tenant_id}", response_model=contracts.TenantRecordOut, summary="租户 · A tenant")
async def tenant(tenant_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.tenant(runtime.engine, tenant_id=tenant_id)


@router.get("/buildings/{building_id}", response_model=contracts.BuildingRecordOut, summary="楼栋 · A building")
async def building(building_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.building(runtime.engine, building_id=building_id)


@router.get("/floors/{floor_id}", response_model=contracts.FloorRecordOut, summary="楼层 · A floor")
async def floor(floor_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.floor(runtime.engine, floor_id=floor_id)


@router.get("/tariffs/{utility}", response_model=contracts.TariffOut, summary="价格 · A utility's tariff versions")
async def tariff(utility: Utility, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.tariff(runtime.engine, utility=utility)


@router.get(
    "/tenants/{tenant_id}/leases",
    response_model=contracts.TenantLeasesOut,
    summary="租户租约 · Every lease of a tenant, ended ones too",
)
async def tenant_leases(tenant_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await queries.tenant_leases(runtime.engine, tenant_id=tenant_id)
