"""Work orders: opened by a fault alarm or by hand; assigned, worked and closed by maintenance staff."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from shuidian_alarm.api.deps import Orders
from shuidian_alarm.api.schemas import Filter, Instant, Limit, Name, Strict, Text
from shuidian_alarm.errors import Invalid
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts.alarm import WorkOrderOut

router = APIRouter()


class WorkOrderIn(Strict):
    device_id: Name = Field(description="the meter or gateway to look at")
    fault_type: Name = Field(description="e.g. inspection, tenant_report, or a device fault's alarm type")
    estate: Name | None = None
    building: Name | None = None
    description: Text
    assignee: Name | None = Field(default=None, description="assigned at once when given")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "device_id": "E-0001",
                    "fault_type": "tenant_report",
                    "estate": "demo",
                    "description": "租户报告电表显示屏不亮 · the tenant reports a blank meter display",
                }
            ]
        },
    )


class WorkOrderPatch(Strict):
    by: Name | None = Field(
        default=None, description="ignored (older clients send it): notes are written by the caller's credential"
    )
    status: Literal["open", "assigned", "in_progress", "resolved", "closed"] | None = None
    assignee: Name | None = None
    note: Text | None = None
    closing_cause: Text | None = None


class RepairTime(BaseModel):
    estate: str | None
    repairs: int
    mean_seconds: float


@router.get("/work-orders", response_model=list[WorkOrderOut], tags=["maintenance"], summary="工单 · Work orders")
async def work_orders(
    orders: Orders,
    estate: Filter = None,
    building: Filter = None,
    device_id: Filter = None,
    fault_type: Filter = None,
    status: Literal["open", "assigned", "in_progress", "resolved", "closed"] | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    return await orders.query(
        estate=estate,
        building=building,
        device_id=device_id,
        fault_type=fault_type,
        status=status,
        since=since,
        until=until,
        limit=limit,
    )


@router.post(
    "/work-orders",
    response_model=WorkOrderOut,
    status_code=201,
    tags=["maintenance"],
    summary="人工开单 · Open a work order by hand (an inspection, a tenant's call)",
)
async def open_work_order(body: WorkOrderIn, orders: Orders, actor: Acting) -> dict[str, Any]:
    return await orders.open(
        device_id=body.device_id,
        fault_type=body.fault_type,
        estate=body.estate,
        building=body.building,
        description=body.description,
        assignee=body.assignee,
        by=actor,
    )


@router.get(
    "/work-orders/mttr", response_model=list[RepairTime], tags=["maintenance"], summary="Mean time to repair per estate"
)
async def mean_time_to_repair(
    orders: Orders, since: Instant | None = None, until: Instant | None = None
) -> list[dict[str, Any]]:
    return await orders.mttr(since, until)


@router.get("/work-orders/{work_order_id}", response_model=WorkOrderOut, tags=["maintenance"], summary="One order")
async def work_order(work_order_id: uuid.UUID, orders: Orders) -> dict[str, Any]:
    return await orders.get(work_order_id)


@router.patch(
    "/work-orders/{work_order_id}",
    response_model=WorkOrderOut,
    tags=["maintenance"],
    summary="Assign, progress, note or close a work order",
)
async def update_work_order(
    work_order_id: uuid.UUID, body: WorkOrderPatch, orders: Orders, actor: Acting
) -> dict[str, Any]:
    if body.status is None and body.assignee is None and body.note is None and body.closing_cause is None:
        raise Invalid("nothing to change")
    return await orders.update(
        work_order_id,
        by=actor,
        status=body.status,
        assignee=body.assignee,
        note=body.note,
        closing_cause=body.closing_cause,
    )
