"""Tariff plans and price correction runs (调价追溯) for staff: plans per estate (optionally building) and
customer class with their effective-dated versions, the customer class of rooms, leases and meters, and
retroactive price decisions previewed, committed once and listed.

Who may do what: reading needs `tariffs:read`; editing plans and classes needs `plans:write` (estate managers,
finance, administrators); previewing and committing a correction needs `corrections:create`. An estate-scoped
principal reads its estates' plans and the plans that span every estate, edits only its estates' plans, and
an object outside its estates does not exist for it (404); a plan of every estate (the default plan, a plan
per class) is edited only by an all-estates principal (403). A correction's run id is its idempotency key:
the same run id answers the first result, once.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.api.auth import require
from shuidian_gateway.api.conventions import ERRORS, Cursor, Limit, ObjectId, Text, page_of_all
from shuidian_gateway.api.deps import UpstreamsDep
from shuidian_gateway.api.routes_operations import IDENT, Identifier, Instant
from shuidian_gateway.api.routes_staff import FlatIn, TariffVersionIn, TieredIn, TouIn, estate_of
from shuidian_gateway.domain.policy import Action, Principal
from shuidian_gateway.errors import Forbidden, ObjectNotFound
from shuidian_shared.contracts.tariff_plans import (
    CustomerClassName,
    CustomerClassOut,
    PlanVersionAdded,
    PlanVersionOut,
    PriceCorrectionOut,
    TariffPlanOut,
)

router = APIRouter(prefix="/v1", responses=ERRORS, tags=["tariff plans"])
Utility = Literal["electricity", "water"]
A_READ, A_WRITE, A_CORRECT = Action.TARIFFS_READ, Action.PLANS_WRITE, Action.CORRECTIONS_CREATE
UPSTREAM_CAP = 1000


def _needs(action: Action) -> Any:
    return Depends(require(action))


def _extra(action: Action) -> dict[str, Any]:
    return {"x-required-action": action.value}


def _doc(text: str, action: Action) -> str:
    return f"{text}\n\nNeeds `{action.value}`."


class TariffPlanPage(BaseModel):
    items: list[TariffPlanOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class PriceCorrectionPage(BaseModel):
    items: list[PriceCorrectionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class PlanIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "杭州 非居民电价", "estate_id": "HZ", "customer_class": "non_residential"}]
        },
    )

    name: Text = Field(min_length=1, max_length=200)
    estate_id: Identifier | None = Field(default=None, description="null: every estate (all-estates staff only)")
    building_id: Identifier | None = Field(default=None, description="one building of the estate; null: all")
    customer_class: CustomerClassName | None = Field(
        default=None, description="居民 residential / 非居民 non_residential (no tiers) / 公共 common; null: all"
    )


class CustomerClassIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer_class": "non_residential"}]})

    customer_class: CustomerClassName | None = Field(
        description="null on a lease or meter: fall back to the lease's or room's class; a room always has one"
    )


class PriceCorrectionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "plan_id": "hz-water",
                    "utility": "water",
                    "period_start": "2026-11-01T00:00:00+08:00",
                    "period_end": "2026-12-01T00:00:00+08:00",
                    "components": [{"kind": "flat", "unit_price": "3.10"}],
                    "reason": "2026 年 11 月水价下调",
                }
            ]
        },
    )

    plan_id: Identifier
    utility: Utility
    period_start: Instant = Field(description="on the hour: the first hour corrected")
    period_end: Instant = Field(description="on the hour and passed: the first hour not corrected")
    components: list[Annotated[FlatIn | TouIn | TieredIn, Field(discriminator="kind")]] = Field(
        min_length=1, max_length=10, description="the price that should have applied (no fixed fees)"
    )
    reason: Text = Field(min_length=1, max_length=500, description="the price decision (调价文件) applied")


async def _visible_plan(upstreams: Upstreams, principal: Principal, plan_id: str) -> dict[str, Any]:
    """The plan, if the caller may see it: its estate's, or one spanning every estate (404 otherwise)."""
    found: dict[str, Any] = await upstreams.call("billing", "GET", f"/v1/tariff-plans/{plan_id}")
    estate = found.get("estate_id")
    if estate is not None and not principal.may_see_estate(str(estate)):
        raise ObjectNotFound("no such tariff plan")
    return found


def _may_edit(principal: Principal, estate_id: str | None) -> None:
    if estate_id is None and not principal.all_estates:
        raise Forbidden("a plan of every estate needs an all-estates role / 全局价格方案需全部小区权限")
    if estate_id is not None and not principal.may_see_estate(estate_id):
        raise Forbidden("this estate is not yours / 非本人管理的小区")


@router.get(
    "/tariff-plans",
    response_model=TariffPlanPage,
    summary="价格方案 · Tariff plans you can see (your estates' and those of every estate)",
    description=_doc("Plans per estate, building and customer class; `default` holds `/v1/tariffs/{utility}`.", A_READ),
    openapi_extra=_extra(A_READ),
)
async def plans(
    principal: Annotated[Principal, _needs(A_READ)],
    upstreams: UpstreamsDep,
    estate_id: Annotated[
        str | None, Query(pattern=IDENT, max_length=64, description="only this estate's plans (and global ones)")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    if principal.all_estates:
        estates = None if estate_id is None else [estate_id]
    else:
        estates = sorted(principal.estates if estate_id is None else principal.estates & {estate_id})
    params = {} if estates is None else {"estate_id": estates or ["-"]}
    found = await upstreams.call("billing", "GET", "/v1/tariff-plans", params=params)
    return page_of_all(found["items"], limit, cursor, None)


@router.get(
    "/tariff-plans/{plan_id}",
    response_model=TariffPlanOut,
    summary="价格方案 · A tariff plan",
    description=_doc("404 for a plan of an estate that is not yours.", A_READ),
    openapi_extra=_extra(A_READ),
)
async def plan(plan_id: ObjectId, principal: Annotated[Principal, _needs(A_READ)], upstreams: UpstreamsDep) -> Any:
    return await _visible_plan(upstreams, principal, plan_id)


@router.put(
    "/tariff-plans/{plan_id}",
    response_model=TariffPlanOut,
    summary="设置价格方案 · Create or rename a tariff plan",
    description=_doc(
        "Its scope (estate, building, class) is fixed once it has versions (409 `plan_scope_fixed`); one plan per "
        "scope (409 `plan_scope_taken`). Estate managers create and edit plans of their own estates.",
        A_WRITE,
    ),
    openapi_extra=_extra(A_WRITE),
)
async def put_plan(
    plan_id: ObjectId, body: PlanIn, principal: Annotated[Principal, _needs(A_WRITE)], upstreams: UpstreamsDep
) -> Any:
    _may_edit(principal, body.estate_id)
    try:
        current = await upstreams.call("billing", "GET", f"/v1/tariff-plans/{plan_id}")
    except UpstreamError as err:  # a new plan: nothing more to check
        if err.status_code != 404:
            raise
    else:
        if current.get("estate_id") is not None and not principal.may_see_estate(str(current["estate_id"])):
            raise ObjectNotFound("no such tariff plan")
        _may_edit(principal, current.get("estate_id"))
    sent = body.model_dump(mode="json")
    return await upstreams.call("billing", "PUT", f"/v1/tariff-plans/{plan_id}", json=sent)


@router.get(
    "/tariff-plans/{plan_id}/versions/{utility}",
    response_model=list[PlanVersionOut],
    summary="方案价格版本 · A plan's versions of a utility, oldest first",
    description=_doc("Each version is numbered within its plan and utility (1, 2, 3 …).", A_READ),
    openapi_extra=_extra(A_READ),
)
async def plan_versions(
    plan_id: ObjectId, utility: Utility, principal: Annotated[Principal, _needs(A_READ)], upstreams: UpstreamsDep
) -> Any:
    await _visible_plan(upstreams, principal, plan_id)
    return await upstreams.call("billing", "GET", f"/v1/tariff-plans/{plan_id}/versions/{utility}")


@router.post(
    "/tariff-plans/{plan_id}/versions/{utility}",
    status_code=201,
    response_model=PlanVersionAdded,
    summary="新增方案价格版本 · Add an effective-dated version to a plan",
    description=_doc(
        "A new price never re-prices the past: once the plan has a version of the utility, one asked to start in the "
        "past starts now. A non-residential plan takes no tiers (422). To change a closed period's price, run a "
        "price correction.",
        A_WRITE,
    ),
    openapi_extra=_extra(A_WRITE),
)
async def add_plan_version(
    plan_id: ObjectId,
    utility: Utility,
    body: TariffVersionIn,
    principal: Annotated[Principal, _needs(A_WRITE)],
    upstreams: UpstreamsDep,
) -> Any:
    found = await _visible_plan(upstreams, principal, plan_id)
    _may_edit(principal, found.get("estate_id"))
    sent = body.model_dump(mode="json", exclude_none=True)
    return await upstreams.call("billing", "POST", f"/v1/tariff-plans/{plan_id}/versions/{utility}", json=sent)


async def _set_class(
    kind: Literal["room", "lease", "meter"],
    object_id: str,
    body: CustomerClassIn,
    principal: Principal,
    upstreams: Upstreams,
) -> Any:
    estate = await estate_of(upstreams, kind, object_id)
    if estate is None or not principal.may_see_estate(estate):
        raise ObjectNotFound(f"no such {kind}")
    sent = body.model_dump(mode="json")
    if kind == "room":
        return await upstreams.call("billing", "PUT", f"/v1/rooms/{object_id}/customer-class", json=sent)
    if kind == "lease":
        return await upstreams.call("billing", "PUT", f"/v1/leases/{object_id}/customer-class", json=sent)
    return await upstreams.call("billing", "PUT", f"/v1/meters/{object_id}/customer-class", json=sent)


_CLASS_DOC = (
    "The class picks the plan of readings billed from now on (the binding's class, else the lease's, else the "
    "room's; a common meter is 公共). Charges already made stay as they were."
)


@router.put(
    "/rooms/{room_id}/customer-class",
    response_model=CustomerClassOut,
    summary="房间用户类别 · A room's customer class (居民/非居民/公共)",
    description=_doc(_CLASS_DOC, A_WRITE),
    openapi_extra=_extra(A_WRITE),
)
async def room_class(
    room_id: ObjectId, body: CustomerClassIn, principal: Annotated[Principal, _needs(A_WRITE)], upstreams: UpstreamsDep
) -> Any:
    return await _set_class("room", room_id, body, principal, upstreams)


@router.put(
    "/leases/{lease_id}/customer-class",
    response_model=CustomerClassOut,
    summary="租约用户类别 · A lease's customer class (overrides the room's)",
    description=_doc(_CLASS_DOC, A_WRITE),
    openapi_extra=_extra(A_WRITE),
)
async def lease_class(
    lease_id: ObjectId, body: CustomerClassIn, principal: Annotated[Principal, _needs(A_WRITE)], upstreams: UpstreamsDep
) -> Any:
    return await _set_class("lease", lease_id, body, principal, upstreams)


@router.put(
    "/meters/{meter_id}/customer-class",
    response_model=CustomerClassOut,
    summary="表计用户类别 · The class of a meter's open binding (overrides lease and room)",
    description=_doc(_CLASS_DOC, A_WRITE),
    openapi_extra=_extra(A_WRITE),
)
async def meter_class(
    meter_id: ObjectId, body: CustomerClassIn, principal: Annotated[Principal, _needs(A_WRITE)], upstreams: UpstreamsDep
) -> Any:
    return await _set_class("meter", meter_id, body, principal, upstreams)


@router.post(
    "/price-corrections/{run_id}/preview",
    response_model=PriceCorrectionOut,
    tags=["tariff plans"],
    summary="调价追溯预览 · Preview a retroactive price decision, household by household",
    description=_doc(
        "Re-prices the plan's charges of a closed period under the given price; writes nothing. A run already "
        "committed answers what it posted.",
        A_CORRECT,
    ),
    openapi_extra=_extra(A_CORRECT),
)
async def preview_correction(
    run_id: uuid.UUID,
    body: PriceCorrectionIn,
    principal: Annotated[Principal, _needs(A_CORRECT)],
    upstreams: UpstreamsDep,
) -> Any:
    await _visible_plan(upstreams, principal, body.plan_id)
    sent = body.model_dump(mode="json", exclude_none=True)
    return await upstreams.call("billing", "POST", f"/v1/price-corrections/{run_id}/preview", json=sent)


@router.post(
    "/price-corrections/{run_id}",
    status_code=201,
    response_model=PriceCorrectionOut,
    summary="调价追溯 · Commit a retroactive price decision (once per run id)",
    description=_doc(
        "Posts each household's difference (whole fen, toward zero) as an audited adjustment; history is never "
        "rewritten. The run id is the idempotency key: the same request again answers the first result "
        "(`replayed`), another request under it is a 409 `run_id_reused`; a run overlapping a committed one of "
        "the same plan is a 409 `correction_overlaps`, an open period a 409 `period_open`.",
        A_CORRECT,
    ),
    openapi_extra=_extra(A_CORRECT),
)
async def commit_correction(
    run_id: uuid.UUID,
    body: PriceCorrectionIn,
    principal: Annotated[Principal, _needs(A_CORRECT)],
    upstreams: UpstreamsDep,
) -> Any:
    await _visible_plan(upstreams, principal, body.plan_id)
    sent = body.model_dump(mode="json", exclude_none=True)
    return await upstreams.call("billing", "POST", f"/v1/price-corrections/{run_id}", json=sent)


@router.get(
    "/price-corrections",
    response_model=PriceCorrectionPage,
    summary="调价追溯记录 · Committed correction runs, newest first",
    description=_doc("Those of the plans you can see.", A_READ),
    openapi_extra=_extra(A_READ),
)
async def corrections(
    principal: Annotated[Principal, _needs(A_READ)],
    upstreams: UpstreamsDep,
    plan_id: Annotated[str | None, Query(pattern=IDENT, max_length=64, description="only this plan's runs")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    if plan_id is not None:
        plans_seen = [(await _visible_plan(upstreams, principal, plan_id))["plan_id"]]
    elif principal.all_estates:
        plans_seen = None
    else:
        found = await upstreams.call(
            "billing", "GET", "/v1/tariff-plans", params={"estate_id": sorted(principal.estates)}
        )
        plans_seen = [p["plan_id"] for p in found["items"]]
    params: dict[str, Any] = {"limit": UPSTREAM_CAP} | ({} if plans_seen is None else {"plan_id": plans_seen or ["-"]})
    runs = await upstreams.call("billing", "GET", "/v1/price-corrections", params=params)
    return page_of_all(runs["items"], limit, cursor, None)


@router.get(
    "/price-corrections/{run_id}",
    response_model=PriceCorrectionOut,
    summary="调价追溯 · A committed correction run",
    description=_doc("404 for a run of a plan you cannot see.", A_READ),
    openapi_extra=_extra(A_READ),
)
async def correction(
    run_id: uuid.UUID, principal: Annotated[Principal, _needs(A_READ)], upstreams: UpstreamsDep
) -> Any:
    found: dict[str, Any] = await upstreams.call("billing", "GET", f"/v1/price-corrections/{run_id}")
    await _visible_plan(upstreams, principal, str(found["plan_id"]))
    return found
