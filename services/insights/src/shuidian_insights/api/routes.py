"""Insights routes: thin — parse, call one adapter, answer."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from shuidian_insights.adapters.analysis import today_in
from shuidian_insights.adapters.container import Components
from shuidian_insights.errors import Invalid, NotFound
from shuidian_shared.contracts import insights as contracts
from shuidian_shared.messages import AwareDatetime, Identifier

router = APIRouter(prefix="/v1", tags=["insights"])

MAX_RAW_DAYS = 400
MAX_ROWS = 200_000


def components(request: Request) -> Components:
    built: Components = request.app.state.components
    return built


Parts = Annotated[Components, Depends(components)]


async def _meters(parts: Parts, meter_id: str | None, room_id: str | None, building_id: str | None) -> list[str]:
    if sum(x is not None for x in (meter_id, room_id, building_id)) != 1:
        raise Invalid("name exactly one of meter_id, room_id, building_id")
    if meter_id is not None:
        return [meter_id]
    meters = await parts.households.meters_in(room_id=room_id, building_id=building_id)
    if not meters:
        raise NotFound("no meters known there")
    return meters


@router.get(
    "/readings/history",
    response_model=contracts.ReadingHistoryOut,
    summary="抄表记录 · Every register value read (raw), or the 日冻结 / 月冻结 values, by meter, room or building",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def history(
    parts: Parts,
    start: AwareDatetime,
    end: AwareDatetime,
    kind: Literal["raw", "day", "month"] = "raw",
    meter_id: Identifier | None = None,
    room_id: Identifier | None = None,
    building_id: Identifier | None = None,
    format: Literal["json", "csv"] = "json",
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 50_000,
) -> Any:
    if not start < end:
        raise Invalid("start must be before end")
    if kind == "raw" and end - start > timedelta(days=MAX_RAW_DAYS):
        raise Invalid(f"at most {MAX_RAW_DAYS} days of raw samples per request")
    meters = await _meters(parts, meter_id, room_id, building_id)
    if kind == "raw":
        # PostgreSQL writes the rows' text (see Archive.raw_text); only the envelope is written here.
        body = await parts.archive.raw_text(meters, start, end, limit, csv=format == "csv")
        if format == "csv":
            lines = body.replace("\n", "\r\n") + "\r\n" if body else ""
            return _csv_response(",".join(RAW_COLUMNS) + "\r\n" + lines, "readings-raw")
        envelope = contracts.ReadingHistoryOut(kind=kind, start=start, end=end, meters=meters, raw=[], frozen=[])
        head = envelope.model_dump_json(exclude={"raw", "frozen"})
        return Response(f'{head[:-1]},"raw":{body},"frozen":[]}}', media_type="application/json")
    first, last = start.astimezone(parts.tz).date(), end.astimezone(parts.tz).date()
    frozen = await parts.archive.frozen(meters, first, last, monthly=kind == "month")
    if format == "csv":
        return _csv(frozen, FROZEN_COLUMNS, f"readings-{kind}")
    return {"kind": kind, "start": start, "end": end, "meters": meters, "raw": [], "frozen": frozen}


RAW_COLUMNS = ["meter_id", "register_name", "read_at", "value", "reading_id"]
FROZEN_COLUMNS = ["meter_id", "register_name", "kind", "frozen_at", "value", "read_at", "reading_id"]
TREND_COLUMNS = ["period", "quantity", "mom_pct", "yoy_pct"]


def _csv(rows: list[dict[str, Any]], columns: list[str], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()})
    return _csv_response(out.getvalue(), filename)


def _csv_response(body: str, filename: str) -> Response:
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


@router.get(
    "/households/{account_id}/report",
    response_model=contracts.TenantReportOut,
    summary="节能建议 · A household's comparison and saving advice, every figure with its inputs",
)
async def tenant_report(account_id: Identifier, parts: Parts, today: date | None = None) -> dict[str, Any]:
    return await parts.analysis.tenant_report(account_id, today or today_in(parts.tz))


@router.post("/what-if", response_model=contracts.WhatIfOut, summary="电价测算 · Re-price the last N months")
async def what_if(body: contracts.WhatIfIn, parts: Parts, today: date | None = None) -> dict[str, Any]:
    return await parts.analysis.what_if(body, today or today_in(parts.tz))


@router.put("/line-loss/groups/{group_id}", status_code=204, summary="线损 · A master meter and its sub-meters")
async def put_group(group_id: Identifier, body: contracts.LineLossGroupIn, parts: Parts) -> None:
    await parts.analysis.put_group(group_id, body)


@router.get(
    "/line-loss/groups/{group_id}/days",
    response_model=list[contracts.LineLossDayOut],
    summary="线损 · Daily loss of a group, with completeness",
)
async def line_loss_days(group_id: Identifier, parts: Parts, start: date, end: date) -> list[dict[str, Any]]:
    return await parts.analysis.line_loss_days(group_id, start, end)


@router.get("/habits", response_model=contracts.HabitsOut, summary="用电习惯 · Typical daily shapes of a month")
async def habits(
    parts: Parts,
    month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
    utility: Literal["electricity", "water"] = "electricity",
    estate_id: Identifier | None = None,
) -> dict[str, Any]:
    return await parts.analysis.habits(utility, month, estate_id)


@router.get(
    "/trends",
    response_model=list[contracts.TrendRow],
    summary="用能趋势 · Monthly use with MoM and YoY (JSON or CSV)",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def trends(
    parts: Parts,
    utility: Literal["electricity", "water"] = "electricity",
    estate_id: Identifier | None = None,
    building_id: Identifier | None = None,
    format: Literal["json", "csv"] = "json",
) -> Any:
    rows = await parts.analysis.trends(utility, estate_id, building_id)
    if format == "csv":
        return _csv(rows, TREND_COLUMNS, f"trends-{utility}")
    return rows


@router.post(
    "/jobs/nightly/run",
    summary="Run the nightly job now (days not done yet)",
    description="`days` is how many days this pass did; `ran` is false when another replica was running the "
    "job (it holds the job's lock) and this call did nothing.",
)
async def run_nightly(parts: Parts) -> dict[str, int | bool]:
    done = await parts.jobs.run_once()
    return {"days": done or 0, "ran": done is not None}
