"""Billing's HTTP API for tariff plans (per estate, building and customer class), their versions, the
customer class of rooms, leases and meters, and price correction runs (调价追溯). The original per-utility
tariff routes in `core` are the default plan's."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from shuidian_billing.adapters.price_corrections import CorrectionRequest
from shuidian_billing.api.deps import BillingDep
from shuidian_billing.domain.tariff_config import ComponentIn, CustomerClass
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts import tariff_plans as contracts
from shuidian_shared.messages import AwareDatetime, Identifier, Utility

router = APIRouter(tags=["tariff plans"])  # mounted under /v1 by `core`


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    estate_id: Identifier | None = Field(default=None, description="null: every estate")
    building_id: Identifier | None = Field(default=None, description="one building of the estate; null: all")
    customer_class: CustomerClass | None = Field(default=None, description="null: every class")


class PlanVersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effective_from: AwareDatetime
    components: tuple[ComponentIn, ...] = Field(min_length=1)


class CustomerClassIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_class: CustomerClass | None = Field(description="null on a lease or meter: use the room's class")


class PriceCorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: Identifier
    utility: Utility
    period_start: AwareDatetime = Field(description="on the hour; the first hour corrected")
    period_end: AwareDatetime = Field(description="on the hour, passed; the first hour not corrected")
    components: tuple[ComponentIn, ...] = Field(min_length=1, description="the price that should have applied")
    reason: str = Field(min_length=1, max_length=500, description="the price decision (调价文件) being applied")

    def request(self) -> CorrectionRequest:
        return CorrectionRequest(
            self.plan_id, self.utility, self.period_start, self.period_end, self.components, self.reason
        )


@router.get("/tariff-plans", response_model=contracts.TariffPlanList, summary="Tariff plans, by id")
async def plans(
    billing: BillingDep,
    estate_id: Annotated[
        list[str] | None, Query(description="only these estates' plans and the all-estate ones")
    ] = None,
) -> dict[str, Any]:
    return {"items": await billing.tariffs.plans(estate_id)}


@router.get("/tariff-plans/{plan_id}", response_model=contracts.TariffPlanOut, summary="A tariff plan")
async def plan(plan_id: str, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.plan(plan_id)


@router.put(
    "/tariff-plans/{plan_id}",
    response_model=contracts.TariffPlanOut,
    summary="Create or rename a tariff plan (its scope is fixed once it has versions)",
)
async def put_plan(plan_id: Identifier, body: PlanIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.put_plan(plan_id, body.name, body.estate_id, body.building_id, body.customer_class)


@router.get(
    "/tariff-plans/{plan_id}/versions/{utility}",
    response_model=list[contracts.PlanVersionOut],
    summary="A plan's versions of a utility, oldest first",
)
async def plan_versions(plan_id: str, utility: Utility, billing: BillingDep) -> list[dict[str, Any]]:
    return await billing.tariffs.tariff_versions(utility, plan_id)


@router.post(
    "/tariff-plans/{plan_id}/versions/{utility}",
    status_code=201,
    response_model=contracts.PlanVersionAdded,
    summary="Add a version to a plan (a new price never re-prices the past)",
)
async def add_plan_version(plan_id: str, utility: Utility, body: PlanVersionIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.put_tariff_version(utility, body.effective_from, body.components, plan_id=plan_id)


@router.put(
    "/rooms/{room_id}/customer-class", response_model=contracts.CustomerClassOut, summary="A room's customer class"
)
async def room_class(room_id: str, body: CustomerClassIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.set_customer_class("room", room_id, body.customer_class)


@router.put(
    "/leases/{lease_id}/customer-class",
    response_model=contracts.CustomerClassOut,
    summary="A lease's customer class (overrides the room's)",
)
async def lease_class(lease_id: str, body: CustomerClassIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.set_customer_class("lease", lease_id, body.customer_class)


@router.put(
    "/meters/{meter_id}/customer-class",
    response_model=contracts.CustomerClassOut,
    summary="The customer class of a meter's open binding (overrides the lease's and room's)",
)
async def meter_class(meter_id: str, body: CustomerClassIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.set_customer_class("meter", meter_id, body.customer_class)


@router.post(
    "/price-corrections/{run_id}/preview",
    response_model=contracts.PriceCorrectionOut,
    summary="调价追溯 preview: each household's difference, nothing written",
)
async def preview_correction(run_id: uuid.UUID, body: PriceCorrectionIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.price_corrections.preview(run_id, body.request())


@router.post(
    "/price-corrections/{run_id}",
    status_code=201,
    response_model=contracts.PriceCorrectionOut,
    summary="调价追溯 commit: post each household's difference once (same run id → same result)",
)
async def commit_correction(
    run_id: uuid.UUID, body: PriceCorrectionIn, billing: BillingDep, actor: Acting
) -> dict[str, Any]:
    return await billing.price_corrections.commit(run_id, body.request(), actor)


@router.get("/price-corrections", response_model=contracts.PriceCorrectionList, summary="Committed runs, newest first")
async def corrections(
    billing: BillingDep,
    plan_id: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"items": await billing.price_corrections.runs(plan_id, limit)}


@router.get(
    "/price-corrections/{run_id}", response_model=contracts.PriceCorrectionOut, summary="A committed correction run"
)
async def correction(run_id: uuid.UUID, billing: BillingDep) -> dict[str, Any]:
    return await billing.price_corrections.run(run_id)
