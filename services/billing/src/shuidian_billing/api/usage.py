"""HTTP surface for tenants' documents: usage history per meter (hour, day, month in local time),
monthly statements (JSON, CSV, PDF) and the explanation of any ledger transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import statements
from shuidian_billing.api.deps import RuntimeDep
from shuidian_billing.errors import NotFound
from shuidian_kit.service import Runtime
from shuidian_shared.contracts import billing as contracts
from shuidian_shared.messages import AwareDatetime
from shuidian_shared.money import Quantity

router = APIRouter(prefix="/v1", tags=["usage and statements"])


class UsageBucket(BaseModel):
    start: str = Field(description="local start of the hour, day or month, with its UTC offset")
    utility: str
    quantity: Quantity
    unit: str
    cost: Quantity = Field(description="exact, before rounding to the fen")
    hours: int = Field(description="hours with usage in the bucket")


class MeterUsageOut(BaseModel):
    meter_id: str
    granularity: str
    timezone: str
    start: str
    end: str
    buckets: list[UsageBucket]
    total_quantity: Quantity
    total_cost: Quantity


class AccountUsageOut(BaseModel):
    account_id: str
    granularity: str
    timezone: str
    start: str
    end: str
    buckets: list[UsageBucket]


Granularity = Literal["hour", "day", "month"]
# The widest range one request may ask for, per granularity (bounded work for a phone chart).
MAX_RANGE = {"hour": timedelta(days=31), "day": timedelta(days=400), "month": timedelta(days=3700)}
DEFAULT_RANGE = {"hour": timedelta(hours=48), "day": timedelta(days=31), "month": timedelta(days=366)}


def _respond(data: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data, custom_encoder={Decimal: str}))


def _buckets(rows: Iterable[Any], tz: ZoneInfo) -> list[dict[str, Any]]:
    """One usage bucket per row of (bucket, utility, quantity, cost, hours)."""
    return [
        {
            "start": row.bucket.replace(tzinfo=tz).isoformat(),
            "utility": row.utility,
            "quantity": row.quantity,
            "unit": statements.UNITS.get(row.utility, ""),
            "cost": row.cost,
            "hours": row.hours,
        }
        for row in rows
    ]


async def usage_history(
    engine: AsyncEngine, meter_id: str, granularity: Granularity, start: datetime, end: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Quantity and exact cost per local hour, day or month: one indexed range query on (meter_id, hour)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT date_trunc(:g, hour AT TIME ZONE :tz) AS bucket, min(utility) AS utility, "
                "sum(quantity) AS quantity, sum(cost) AS cost, count(*) AS hours "
                "FROM billing.usage_hourly WHERE meter_id = :m AND hour >= :s AND hour < :e GROUP BY 1 ORDER BY 1"
            ),
            {"g": granularity, "tz": str(tz), "m": meter_id, "s": start, "e": end},
        )
        return _buckets(rows, tz)


async def household_usage(
    engine: AsyncEngine, account_id: str, granularity: Granularity, start: datetime, end: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """A household's usage and exact cost per utility and local bucket, from the charge decomposition:
    it follows the household across meter replacements and moves (index on (account_id, hour))."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                # Each usage component prices the whole quantity, so one component's lines give the
                # quantity, while the cost is the sum over every component.
                "WITH per_component AS (SELECT c.meter_id, c.hour, t.utility, c.component, sum(c.quantity) AS q, "
                "  sum(c.amount) AS a FROM billing.charge_lines c JOIN billing.tariffs t USING (tariff_id) "
                "  WHERE c.account_id = :acc AND c.hour >= :s AND c.hour < :e GROUP BY 1, 2, 3, 4), "
                "per_hour AS (SELECT meter_id, hour, utility, max(q) AS q, sum(a) AS a FROM per_component GROUP BY 1, 2, 3) "
                "SELECT date_trunc(:g, hour AT TIME ZONE :tz) AS bucket, utility, sum(q) AS quantity, sum(a) AS cost, "
                "count(DISTINCT hour) AS hours FROM per_hour GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            {"g": granularity, "tz": str(tz), "acc": account_id, "s": start, "e": end},
        )
        return _buckets(rows, tz)


def _range(
    granularity: Granularity, start: datetime | None, end: datetime | None, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    start = start or _default_start(granularity, end, tz)
    if not start < end:
        raise statements.StatementError("start must be before end", code="invalid_range")
    if end - start > MAX_RANGE[granularity]:
        raise statements.StatementError(
            f"at most {MAX_RANGE[granularity].days} days per request at {granularity} granularity", code="invalid_range"
        )
    return start, end


def _default_start(granularity: Granularity, end: datetime, tz: ZoneInfo) -> datetime:
    local = (end - DEFAULT_RANGE[granularity]).astimezone(tz)
    if granularity == "day":
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif granularity == "month":
        local = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(UTC)


Start = Annotated[AwareDatetime | None, Query(description="inclusive; default depends on granularity")]
End = Annotated[AwareDatetime | None, Query(description="exclusive; default now")]
UsageReader = Callable[[AsyncEngine, str, Granularity, datetime, datetime, ZoneInfo], Awaitable[list[dict[str, Any]]]]


async def _history(
    runtime: Runtime,
    read: UsageReader,
    owner_id: str,
    granularity: Granularity,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, Any]:
    """A meter's or a household's usage buckets over the asked window, with the window in local time."""
    tz = ZoneInfo(runtime.settings.timezone)
    start, end = _range(granularity, start, end, tz)
    return {
        "granularity": granularity,
        "timezone": str(tz),
        "start": start.astimezone(tz).isoformat(),
        "end": end.astimezone(tz).isoformat(),
        "buckets": await read(runtime.engine, owner_id, granularity, start, end, tz),
    }


@router.get(
    "/meters/{meter_id}/usage",
    response_model=MeterUsageOut,
    summary="Usage history of a meter: quantity and cost per local hour, day or month",
)
async def meter_usage(
    meter_id: str,
    runtime: RuntimeDep,
    granularity: Granularity = "hour",
    start: Start = None,
    end: End = None,
) -> dict[str, Any]:
    history = await _history(runtime, usage_history, meter_id, granularity, start, end)
    buckets = history["buckets"]
    return {
        "meter_id": meter_id,
        **history,
        "total_quantity": sum((b["quantity"] for b in buckets), Decimal(0)),
        "total_cost": sum((b["cost"] for b in buckets), Decimal(0)),
    }


@router.get(
    "/meters/{meter_id}/reading",
    response_model=contracts.LatestReadingOut,
    summary="最新读数 · The last register values billed for a meter (its watermarks); 404 before the first",
)
async def latest_reading(meter_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT register, value, sampled_at FROM billing.watermarks WHERE meter_id = :m ORDER BY register"
                ),
                {"m": meter_id},
            )
        ).all()
    if not rows:
        raise NotFound(f"表计 {meter_id} 尚无读数 · no reading billed for meter {meter_id}")
    return {
        "meter_id": meter_id,
        "sampled_at": max(r.sampled_at for r in rows),
        "registers": {r.register: r.value for r in rows},
    }


@router.get(
    "/accounts/{account_id}/usage",
    response_model=AccountUsageOut,
    summary="Usage history of a household per utility: quantity and cost per local hour, day or month",
)
async def account_usage(
    account_id: str,
    runtime: RuntimeDep,
    granularity: Granularity = "day",
    start: Start = None,
    end: End = None,
) -> dict[str, Any]:
    return {"account_id": account_id, **await _history(runtime, household_usage, account_id, granularity, start, end)}


@router.get(
    "/accounts/{account_id}/statements/{month}",
    summary="Monthly statement (月结单) as JSON, CSV or PDF; month is YYYY-MM in local time",
    responses={200: {"content": {"application/json": {}, "text/csv": {}, "application/pdf": {}}}},
)
async def monthly_statement(
    account_id: str, month: str, runtime: RuntimeDep, format: Literal["json", "csv", "pdf"] = "json"
) -> Response:
    tz = ZoneInfo(runtime.settings.timezone)
    doc = await statements.statement(runtime.engine, account_id, month, tz)
    filename = f"statement-{account_id}-{month}"
    if format == "csv":
        return Response(
            statements.to_csv(doc),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )
    if format == "pdf":
        return Response(
            statements.to_pdf(doc),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{filename}.pdf"'},
        )
    return _respond(doc)


@router.get(
    "/ledger/transactions/{txn_id}/explain",
    summary="Explain a ledger transaction: readings, tariff version, segment or tier, quantity, price, rounding",
)
async def explain(txn_id: uuid.UUID, runtime: RuntimeDep) -> JSONResponse:
    return _respond(await statements.explain(runtime.engine, txn_id, ZoneInfo(runtime.settings.timezone)))
