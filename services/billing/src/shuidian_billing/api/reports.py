"""HTTP routes of reports: parse, call `adapters.reports`, answer (the queries live there)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from shuidian_billing.adapters import reports as queries
from shuidian_billing.adapters.reports import ARREARS_SORTS
from shuidian_billing.api.deps import RuntimeDep
from shuidian_billing.api.listings import (
    EstateFilter,
    Limit,
    Offset,
    SortParam,
)
from shuidian_shared.messages import Utility
from shuidian_shared.money import Money, Quantity

router = APIRouter(prefix="/reports", tags=["reports"])  # included under /v1 by api/core.py
Bound = Annotated[str | None, Query(description="a local date (YYYY-MM-DD, its local midnight) or an aware instant")]


class ArrearsRow(BaseModel):
    account_id: str
    account_name: str
    estate_id: str | None
    purse: str = Field(description="'all' (水电一卡通) or the utility of a separate balance")
    balance: Money = Field(description="paid + subsidy credit on the ledger (negative)")
    owed: Money = Field(description="−balance: what the household owes")
    grace_credit: Money
    level: str = Field(description="balance level; 'exhausted' once past the grace credit (supply cut)")
    since: datetime = Field(description="when the ledger entry that took the balance below zero was booked")
    days_in_arrears: int = Field(description="whole days from `since` until now")
    room_id: str | None
    room_code: str | None
    tenant_id: str | None
    tenant_name: str | None
    phone: str | None


class ArrearsPage(BaseModel):
    items: list[ArrearsRow]
    next_offset: int | None


@router.get(
    "/arrears",
    response_model=ArrearsPage,
    summary="欠费清单 · Households in arrears, longest first",
    description="A purse is in arrears when its ledger balance (paid + subsidy credit) is below zero. "
    "`since` is when the ledger entry that last took it from ≥ 0 to < 0 was booked; `days_in_arrears` "
    "counts whole days since then. `level` says whether supply is cut (exhausted past the grace credit). "
    "Sort by " + ", ".join(sorted(ARREARS_SORTS)) + " (default `-days_in_arrears`).",
)
async def arrears(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    min_days: Annotated[int, Query(ge=0, le=36_500, description="only those in arrears at least this long")] = 0,
    sort: SortParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await queries.arrears(
        runtime.engine, estate_id=estate_id, min_days=min_days, sort=sort, limit=limit, offset=offset
    )


class RevenueFigures(BaseModel):
    payments: Money = Field(description="top-ups received (缴费)")
    refunds: Money = Field(description="refunds paid out (退款)")
    corrections: Money = Field(description="冲正 of payments or refunds (signed: money in is positive)")
    net: Money = Field(description="payments − refunds + corrections: the channel account's ledger movement, negated")
    count: int = Field(description="number of top-ups")


class RevenueDay(RevenueFigures):
    day: str = Field(description="local date")
    channel: str


class RevenueChannel(RevenueFigures):
    channel: str
    channel_zh: str


class RevenueOut(BaseModel):
    estate_id: str | None
    timezone: str
    start: str
    end: str
    days: list[RevenueDay]
    channels: list[RevenueChannel]
    total: RevenueFigures
    summary_zh: str
    summary_en: str


@router.get(
    "/revenue",
    response_model=RevenueOut,
    summary="收入 · Money received per channel and local day, net of refunds, from the ledger",
    description="Per local (Asia/Shanghai) day and channel over [start, end): top-ups, refunds, 冲正 and the net, "
    "which is the channel ledger account's movement negated — so the report balances with the ledger to the fen. "
    "Default window: this local month until now; at most 400 days.",
)
async def revenue(
    runtime: RuntimeDep, estate_id: EstateFilter = None, start: Bound = None, end: Bound = None
) -> dict[str, Any]:
    return await queries.revenue(
        runtime.engine, timezone=runtime.settings.timezone, estate_id=estate_id, start=start, end=end
    )


class ConsumptionRow(BaseModel):
    estate_id: str | None
    kind: str = Field(description="building (rooms' meters), common (公摊 meters of the estate) or unassigned")
    building_id: str | None
    building_name: str | None
    utility: Utility
    unit: str
    meters: int
    quantity: Quantity
    cost: Quantity = Field(description="exact, before rounding to the fen")


class SharedAreaRow(BaseModel):
    estate_id: str
    building_id: str | None
    building_name: str | None
    amount: Money = Field(description="公摊 posted to the building's households for months starting in the window")


class ConsumptionOut(BaseModel):
    estate_id: str | None
    utility: Utility | None
    timezone: str
    start: str
    end: str
    rows: list[ConsumptionRow]
    totals: list[ConsumptionRow] = Field(description="one row per utility over every building")
    shared_area: list[SharedAreaRow]
    summary_zh: str
    summary_en: str


@router.get(
    "/consumption",
    response_model=ConsumptionOut,
    summary="用量 · kWh / m³ and cost per building and utility, with common meters and 公摊",
    description="From the hourly usage billing keeps, over [start, end) (hours by their start; default this "
    "local month until now; at most 400 days). A meter counts for the building of the room it was bound to "
    "in each hour; common meters (公摊) of the estate form their own row, and `shared_area` lists the 公摊 "
    "amounts posted to each building's households for months that start in the window.",
)
async def consumption(
    runtime: RuntimeDep,
    estate_id: EstateFilter = None,
    start: Bound = None,
    end: Bound = None,
    utility: Utility | None = None,
) -> dict[str, Any]:
    return await queries.consumption(
        runtime.engine, timezone=runtime.settings.timezone, estate_id=estate_id, start=start, end=end, utility=utility
    )


class CollectionRow(BaseModel):
    estate_id: str | None
    estate_name: str | None
    billable: Money = Field(description="应收: usage, fixed fees and 公摊 charged to households, net of their 冲正")
    collected: Money = Field(description="实收: households' top-ups net of refunds and their 冲正")
    subsidies: Money = Field(description="补贴 credited (not counted as collected)")
    collection_rate: Decimal | None = Field(description="collected ÷ billable to 4 places; null when nothing billable")
    collection_rate_percent: str | None = Field(examples=["97.31%"])
    households_billed: int
    households_paid: int


class CollectionOut(BaseModel):
    month: str
    timezone: str
    start: str
    end: str
    estates: list[CollectionRow]
    total: CollectionRow
    summary_zh: str
    summary_en: str


@router.get(
    "/collection-rate",
    response_model=CollectionOut,
    summary="收缴率 · Collected ÷ billable per estate for a local month",
    description="收缴率 = 实收 ÷ 应收 over the local calendar month (by booking time). 应收 (billable): what was "
    "charged to households — usage, fixed fees and 公摊, net of their 冲正 — whether paid from credit, subsidy "
    "or not at all. 实收 (collected): what households paid in — top-ups through every channel, net of refunds "
    "and of their 冲正. Subsidies (补贴) are reported apart and not counted as collected. With prepaid balances "
    "the rate can exceed 100 % (money paid ahead).",
)
async def collection_rate(
    runtime: RuntimeDep,
    month: Annotated[str, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, local time")],
    estate_id: EstateFilter = None,
) -> dict[str, Any]:
    return await queries.collection_rate(
        runtime.engine, timezone=runtime.settings.timezone, month=month, estate_id=estate_id
    )
