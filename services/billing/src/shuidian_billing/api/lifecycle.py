"""HTTP surface of the lease lifecycle: the move-out settlement of a lease and the republication of
every room's retained occupancy."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from shuidian_billing.api.deps import OccupancyDep, SettlementsDep
from shuidian_billing.api.payment_schemas import RefundOut
from shuidian_billing.api.payments import IdempotencyKey, replayable
from shuidian_kit.service_auth import Acting
from shuidian_shared.messages import Identifier
from shuidian_shared.money import Money, Quantity

router = APIRouter(prefix="/v1", tags=["lifecycle"])


class ClosingReadingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meter_id: Identifier
    value: Quantity = Field(
        description="the register read on site at move-out (kWh or m³), for a meter that cannot be read remotely"
    )


class LeaseSettlementIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"operator": "manager-wang", "move_out": "2026-11-20"},
                {
                    "operator": "manager-wang",
                    "reason": "退租结算 · move-out settlement",
                    "closing_readings": [{"meter_id": "W-0302", "value": "412.37"}],
                },
            ]
        },
    )

    operator: str | None = Field(
        default=None, min_length=1, max_length=100, description="ignored: who acts is the caller's credential"
    )
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "退租结算 · move-out settlement"
    move_out: date | None = Field(
        default=None, description="ends the lease on this local date first, if it is still open"
    )
    closing_readings: list[ClosingReadingIn] = Field(
        default_factory=list,
        max_length=20,
        description="staff-entered closing values of meters without a final reading",
    )


class FinalReadingOut(BaseModel):
    meter_id: str
    utility: str
    source: Literal["meter", "closing_value"]
    value: Quantity | None = Field(description="the register at or after the move-out instant")
    sampled_at: datetime | None
    operator: str | None = Field(description="who entered a closing value")
    billed_through_register: Quantity | None = Field(description="the register the household was billed up to")


class ConsumptionOut(BaseModel):
    utility: str
    component: str
    quantity: Quantity
    amount_exact: Quantity


class FeeOut(BaseModel):
    month: str
    utility: str
    component: str
    days: int
    days_in_month: int
    amount: Money
    posted_by: Literal["monthly_run", "settlement"]


class FinalBillOut(BaseModel):
    period_start: datetime
    period_end: datetime
    consumption: list[ConsumptionOut] = Field(description="usage charged to the household in the final period, exact")
    fixed_fees: list[FeeOut] = Field(description="the final month's fixed fees, pro-rated to the days leased")


class RefundSummaryOut(BaseModel):
    settlement_id: uuid.UUID
    refundable_before: Money
    refunded: Money
    not_refunded: Money
    paid_balance_after: Money
    subsidy_kept: Money = Field(description="subsidy (补贴) credit is never refunded")
    refunds: list[RefundOut]


class BalanceOut(BaseModel):
    paid: Money
    subsidy: Money
    pending: Quantity
    available: Quantity


class LeaseSettlementOut(BaseModel):
    settlement_id: uuid.UUID
    lease_id: str
    account_id: str
    room_id: str
    tenant_id: str
    move_in: date
    move_out: date
    moved_out_at: datetime
    final_readings: list[FinalReadingOut]
    final_bill: FinalBillOut
    refund: RefundSummaryOut
    closing_balance: BalanceOut
    arrears: Money = Field(description="what the household still owes: left on the ledger as a receivable")
    operator: str
    reason: str
    replayed: bool


class RepublishOut(BaseModel):
    rooms: int = Field(description="rooms whose retained occupancy was queued again")


@router.post(
    "/leases/{lease_id}/settlement",
    status_code=201,
    response_model=LeaseSettlementOut,
    summary="退租结算: final readings, final bill and refund of a lease (idempotent, once per lease)",
    responses={
        200: {"description": "a replay: the settlement made under this Idempotency-Key"},
        409: {
            "description": "final_reading_missing, lease_not_ended, move_out_not_reached, account_in_use, "
            "month_run_pending, closing_value_superseded, lease_settled"
        },
        422: {"description": "unknown_meter, closing_value_below_register, closing_value_held"},
    },
)
async def settle_lease(
    lease_id: Identifier,
    body: LeaseSettlementIn,
    settlements: SettlementsDep,
    idempotency_key: IdempotencyKey,
    response: Response,
    actor: Acting,
) -> dict[str, Any]:
    result = await settlements.settle(
        lease_id,
        operator=actor,
        reason=body.reason,
        key=idempotency_key,
        move_out=body.move_out,
        closing={c.meter_id: c.value for c in body.closing_readings},
    )
    return replayable(result, result["replayed"], response)


@router.get("/leases/{lease_id}/settlement", response_model=LeaseSettlementOut, summary="A lease's settlement")
async def lease_settlement(lease_id: str, settlements: SettlementsDep) -> dict[str, Any]:
    return await settlements.get(lease_id)


@router.post(
    "/rooms/occupancy/republish",
    response_model=RepublishOut,
    summary="Republish every room's retained occupancy (e.g. after the broker lost its retained messages)",
    description="500 rooms per transaction, each chunk queued only once fewer than 500 events wait in the "
    "outbox, so live events (balance changes) are not held up; returns when every room is queued.",
)
async def republish_occupancy(occupancy: OccupancyDep) -> dict[str, int]:
    return {"rooms": await occupancy.republish()}
