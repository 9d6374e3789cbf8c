"""Insights at the edge: a tenant's report (`/v1/me/accounts/{account_id}/insights`, own households only)
and the staff analyses under `/v1/insights/…` — reading history (JSON or CSV), what-if, habits, trends and
line loss — each behind its action and kept inside the caller's estates. The backend is the insights
service (`GATEWAY_INSIGHTS_URL`); its models are `shuidian_shared.contracts.insights`.

Request shapes here admit only what insights accepts: a history window is a start and a number of days,
a proposed tariff is a flat price, 24 hourly prices and tier blocks above which one open price applies, so
no request that passes the schema can be refused by insights for its shape."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from shuidian_gateway.adapters.scopes import TenantScopes
from shuidian_gateway.adapters.upstream import Upstreams
from shuidian_gateway.api.auth import Tenant, require
from shuidian_gateway.api.conventions import ERRORS, MonthQuery, ObjectId, Price, Quantity
from shuidian_gateway.api.deps import UpstreamsDep, container_of
from shuidian_gateway.api.routes_me import owned
from shuidian_gateway.api.routes_staff import _body, _whole, estate_of
from shuidian_gateway.domain.policy import Action, Principal
from shuidian_gateway.errors import Forbidden, ObjectNotFound
from shuidian_shared.contracts import insights as contracts
from shuidian_shared.messages import AwareDatetime, Identifier

tenant_router = APIRouter(prefix="/v1/me", tags=["tenant"], responses=ERRORS)
staff_router = APIRouter(prefix="/v1/insights", tags=["insights"], responses=ERRORS)


def _scopes(request: Request) -> TenantScopes:
    return container_of(request).scopes


Scopes = Annotated[TenantScopes, Depends(_scopes)]
Reports = Annotated[Principal, Depends(require(Action.REPORTS_READ))]
Configure = Annotated[Principal, Depends(require(Action.ALARMS_CONFIGURE))]
PERCENT_PATTERN = r"^(100(\.0{1,2})?|[0-9]{1,2}(\.[0-9]{1,2})?)$"


def _percent(value: Any) -> Decimal:
    written = str(value) if isinstance(value, Decimal) else value
    if not isinstance(written, str) or not re.fullmatch(PERCENT_PATTERN, written):
        raise ValueError("per cent 0–100 as a JSON string, up to two decimals / 百分比格式错误")
    return Decimal(written)


Percent = Annotated[
    Decimal,
    BeforeValidator(_percent),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "examples": ["8"], "description": "per cent, 0–100"}),
]


@tenant_router.get(
    "/accounts/{account_id}/insights",
    response_model=contracts.TenantReportOut,
    summary="节能建议 · How you compare with similar homes and what would save money, every figure explained",
)
async def my_insights(account_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: UpstreamsDep) -> Any:
    await owned(principal, scopes, "account", account_id)
    return await upstreams.call("insights", "GET", f"/v1/households/{account_id}/report")


def _estate_scoped(principal: Principal, estate_id: str | None) -> str | None:
    """An estate-scoped caller names one of their estates (or has exactly one, which is filled in)."""
    if principal.all_estates:
        return estate_id
    if estate_id is None and len(principal.estates) == 1:
        estate_id = next(iter(principal.estates))
    if estate_id is None or not principal.may_see_estate(estate_id):
        raise Forbidden("pass estate_id= one of your estates / 请指定您管理的小区")
    return estate_id


async def _visible(principal: Principal, upstreams: Upstreams, kind: str, object_id: str) -> None:
    if not principal.may_see_estate(await estate_of(upstreams, kind, object_id)):
        raise ObjectNotFound(f"no such {kind} / 未找到")


async def _history(
    upstreams: Upstreams, kind: str, object_id: str, start: AwareDatetime, days: int, shape: str, format: str
) -> Response:
    params = {
        f"{kind}_id": object_id,
        "start": start.isoformat(),
        "end": (start + timedelta(days=days)).isoformat(),
        "kind": shape,
        "format": format,
    }
    response = await upstreams.raw("insights", "GET", "/v1/readings/history", params=params)
    return Response(
        response.content,
        media_type=response.headers.get("content-type", "application/json"),
        headers={k: v for k, v in response.headers.items() if k.lower() == "content-disposition"},
    )


JSON_OR_CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}, "text/csv": {}}}}
Start = Annotated[AwareDatetime, Query(description="inclusive")]
Days = Annotated[int, Query(ge=1, le=400, description="how many days from start")]
Shape = Annotated[Literal["raw", "day", "month"], Query(alias="kind", description="raw samples, 日冻结 or 月冻结")]
Format = Annotated[Literal["json", "csv"], Query()]


KINDS = {"meters": "meter", "rooms": "room", "buildings": "building"}


@staff_router.get(
    "/{kind}/{object_id}/readings",
    summary="抄表记录 · A meter's, room's or building's samples or frozen values (JSON or CSV)",
    response_model=contracts.ReadingHistoryOut,
    responses=JSON_OR_CSV,
)
async def readings(
    kind: Literal["meters", "rooms", "buildings"],
    object_id: ObjectId,
    principal: Reports,
    upstreams: UpstreamsDep,
    start: Start,
    days: Days = 1,
    shape: Shape = "raw",
    format: Format = "json",
) -> Response:
    await _visible(principal, upstreams, KINDS[kind], object_id)
    return await _history(upstreams, KINDS[kind], object_id, start, days, shape, format)


class TierIn(BaseModel):
    model_config = _body({"width": "180", "unit_price": "0.56"})

    width: Quantity
    unit_price: Price
    extra_width_per_person: Quantity = Decimal(0)


class TiersIn(BaseModel):
    model_config = _body({"blocks": [{"width": "180", "unit_price": "0.56"}], "above_price": "0.86"})

    period: Literal["month", "year"] = "month"
    base_household_size: Annotated[int, Field(ge=1, le=30), BeforeValidator(_whole)] = 1
    blocks: list[TierIn] = Field(default_factory=list, max_length=9)
    above_price: Price = Field(description="the price of the open block above the last width")


class ProposedTariffIn(BaseModel):
    model_config = _body({"flat_price": "0", "hourly_prices": ["0.30"] * 8 + ["0.68"] * 14 + ["0.30"] * 2})

    flat_price: Price = Field(default=Decimal(0), description="per unit at every hour")
    hourly_prices: list[Price] | None = Field(
        default=None, min_length=24, max_length=24, description="time-of-use: a price per local hour 00–23"
    )
    tiers: TiersIn | None = None
    fixed_per_month: Price | None = None

    def components(self) -> list[dict[str, Any]]:
        """The same tariff as billing's components, which insights prices."""
        out: list[dict[str, Any]] = [{"kind": "flat", "unit_price": str(self.flat_price)}]
        if self.hourly_prices is not None:
            rates = [{"label": f"h{h:02d}", "unit_price": str(p)} for h, p in enumerate(self.hourly_prices)]
            segments = [{"start": f"{h:02d}:00", "rate": f"h{h:02d}"} for h in range(24)]
            out.append({"kind": "tou", "rates": rates, "segments": segments})
        if self.tiers is not None:
            blocks: list[dict[str, Any]] = [
                {
                    "label": f"{i + 1}",
                    "width": str(b.width),
                    "unit_price": str(b.unit_price),
                    "extra_width_per_person": str(b.extra_width_per_person),
                }
                for i, b in enumerate(self.tiers.blocks)
            ]
            blocks.append({"label": f"{len(blocks) + 1}", "width": None, "unit_price": str(self.tiers.above_price)})
            out.append(
                {
                    "kind": "tiered",
                    "period": self.tiers.period,
                    "base_household_size": self.tiers.base_household_size,
                    "blocks": blocks,
                }
            )
        if self.fixed_per_month is not None:
            out.append({"kind": "fixed", "amount_per_month": str(self.fixed_per_month)})
        return out


class WhatIfIn(BaseModel):
    model_config = _body({"utility": "electricity", "months": 12, "proposed": {"flat_price": "0.60"}})

    utility: Literal["electricity", "water"]
    proposed: ProposedTariffIn
    months: Annotated[int, Field(ge=1, le=36), BeforeValidator(_whole)] = 12
    estate_id: Identifier | None = None


@staff_router.post("/what-if", response_model=contracts.WhatIfOut, summary="电价测算 · Re-price the last N months")
async def what_if(body: WhatIfIn, principal: Reports, upstreams: UpstreamsDep) -> Any:
    request = {
        "utility": body.utility,
        "months": body.months,
        "estate_id": _estate_scoped(principal, body.estate_id),
        "proposed": {"components": body.proposed.components()},
    }
    return await upstreams.call("insights", "POST", "/v1/what-if", json=request)


@staff_router.get("/habits", response_model=contracts.HabitsOut, summary="用电习惯 · Typical daily shapes")
async def habits(
    principal: Reports,
    upstreams: UpstreamsDep,
    month: MonthQuery,
    utility: Literal["electricity", "water"] = "electricity",
    estate_id: Identifier | None = None,
) -> Any:
    estate = _estate_scoped(principal, estate_id)
    params = {"month": month, "utility": utility, **({"estate_id": estate} if estate else {})}
    return await upstreams.call("insights", "GET", "/v1/habits", params=params)


@staff_router.get(
    "/trends",
    response_model=list[contracts.TrendRow],
    summary="用能趋势 · Monthly use, MoM and YoY (JSON or CSV)",
    responses=JSON_OR_CSV,
)
async def trends(
    principal: Reports,
    upstreams: UpstreamsDep,
    utility: Literal["electricity", "water"] = "electricity",
    estate_id: Identifier | None = None,
    building_id: Identifier | None = None,
    format: Format = "json",
) -> Response:
    if building_id is not None:
        await _visible(principal, upstreams, "building", building_id)
        estate = estate_id
    else:
        estate = _estate_scoped(principal, estate_id)
    params = {
        "utility": utility,
        "format": format,
        **({"estate_id": estate} if estate else {}),
        **({"building_id": building_id} if building_id else {}),
    }
    response = await upstreams.raw("insights", "GET", "/v1/trends", params=params)
    return Response(response.content, media_type=response.headers.get("content-type", "application/json"))


class LineLossGroupIn(BaseModel):
    model_config = _body({"master_meter_id": "M-B1", "sub_meter_ids": ["M-101", "M-102"], "threshold_pct": "8"})

    master_meter_id: Identifier
    sub_meter_ids: list[Identifier] = Field(min_length=1, max_length=5000)
    threshold_pct: Percent = Field(default=Decimal(8), description="a loss above this per cent raises the alarm")
    min_completeness_pct: Percent = Field(default=Decimal(95), description="per cent of the meters complete to judge")
    estate_id: Identifier | None = None


@staff_router.put("/line-loss/groups/{group_id}", status_code=204, summary="线损 · A master meter and its sub-meters")
async def put_line_loss_group(
    group_id: ObjectId, body: LineLossGroupIn, principal: Configure, upstreams: UpstreamsDep
) -> None:
    estate = _estate_scoped(principal, body.estate_id)
    if not principal.all_estates:
        for meter in (body.master_meter_id, *body.sub_meter_ids):
            await _visible(principal, upstreams, "meter", meter)
    request = {
        "master_meter_id": body.master_meter_id,
        "sub_meter_ids": body.sub_meter_ids,
        "threshold_pct": str(body.threshold_pct),
        "min_completeness_pct": str(body.min_completeness_pct),
        "estate_id": estate,
    }
    await upstreams.call("insights", "PUT", f"/v1/line-loss/groups/{group_id}", json=request)


@staff_router.get(
    "/line-loss/groups/{group_id}/days",
    response_model=list[contracts.LineLossDayOut],
    summary="线损 · A group's daily loss with completeness",
)
async def line_loss_days(
    group_id: ObjectId, principal: Reports, upstreams: UpstreamsDep, start: date, end: date
) -> Any:
    if not principal.all_estates:
        raise Forbidden("line-loss groups span estates' feeders; they need an all-estates role / 需全部小区权限")
    params = {"start": start.isoformat(), "end": end.isoformat()}
    return await upstreams.call("insights", "GET", f"/v1/line-loss/groups/{group_id}/days", params=params)


routers = (tenant_router, staff_router)
