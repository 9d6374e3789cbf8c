"""HTTP surface for tenants' documents: usage history per meter (hour, day, month in local time),
monthly statements (JSON, CSV, PDF) and the explanation of any ledger transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import statement_pdf, statements, usage
from shuidian_billing.adapters.usage import Granularity, household_usage, usage_history
from shuidian_billing.api.deps import RuntimeDep
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


# The widest range one request may ask for, per granularity (bounded work for a phone chart).
MAX_RANGE = {"hour": timedelta(days=31), "day": timedelta(days=400), "month": timedelta(days=3700)}
DEFAULT_RANGE = {"hour": timedelta(hours=48), "day": timedelta(days=31), "month": timedelta(days=366)}


def _respond(data: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data, custom_encoder={Decimal: str}))


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
    return await usage.latest_reading(runtime.engine, meter_id)


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
            await statement_pdf.render_pdf(doc),
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
