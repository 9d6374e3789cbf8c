"""The first staff API (`/api/v1`, kept for the dev stack and existing clients): balances, top-ups,
meters and alarms. New clients use `/v1` (routes_staff.py), which adds paging, ETags and estate
scoping. Any principal allowed the route's action may call it; the bootstrap staff key may call all."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field

from shuidian_gateway.auth import require
from shuidian_gateway.conventions import ERRORS, ObjectId
from shuidian_gateway.errors import Forbidden
from shuidian_gateway.policy import Action, Principal
from shuidian_gateway.routes_staff import TopUpIn
from shuidian_gateway.upstream import UpstreamError, UpstreamsDep
from shuidian_shared.money import Money


def _all_estates(principal: Principal) -> Principal:
    # These routes predate estate scoping: only principals that see every estate may use them.
    if not principal.all_estates:
        raise Forbidden("use the /v1 API, which is scoped to your estates")
    return principal


Service = UpstreamsDep
router = APIRouter(prefix="/api/v1", responses=ERRORS, deprecated=True)


class AccountOut(BaseModel):
    account_id: str
    name: str
    balance: Money
    available: Decimal = Field(description="balance less unposted charges of the current hour")
    level: str
    sequence: int


class PaymentOut(BaseModel):
    payment_id: str
    account_id: str
    amount: Money
    channel: str
    balance_after: Money
    replayed: bool


@router.get("/accounts/{account_id}", response_model=AccountOut, tags=["accounts"], summary="余额 · Balance")
async def account(
    account_id: ObjectId, upstreams: Service, principal: Annotated[Principal, Depends(require(Action.ACCOUNTS_READ))]
) -> Any:
    _all_estates(principal)
    return await upstreams.call("billing", "GET", f"/v1/accounts/{account_id}")


@router.post(
    "/accounts/{account_id}/topups",
    response_model=PaymentOut,
    status_code=201,
    tags=["accounts"],
    summary="充值 · Top up (idempotent)",
)
async def top_up(
    account_id: ObjectId,
    body: TopUpIn,
    upstreams: Service,
    idempotency_key: Annotated[str, Header(min_length=8, max_length=100)],
    principal: Annotated[Principal, Depends(require(Action.TOPUPS_CREATE))],
) -> Any:
    _all_estates(principal)
    return await upstreams.call(
        "billing",
        "POST",
        f"/v1/accounts/{account_id}/topups",
        json=body.model_dump(mode="json"),
        headers={"Idempotency-Key": idempotency_key},
    )


@router.get("/meters/{meter_id}", tags=["meters"], summary="表计状态 · Meter relay shadow and device state")
async def meter(
    meter_id: ObjectId, upstreams: Service, principal: Annotated[Principal, Depends(require(Action.DEVICES_READ))]
) -> dict[str, Any]:
    _all_estates(principal)
    device = await upstreams.call("collector", "GET", f"/v1/meters/{meter_id}/state")
    try:
        shadow = await upstreams.call("control", "GET", f"/v1/meters/{meter_id}/shadow")
    except UpstreamError as err:
        if err.status_code != 404:
            raise
        shadow = None  # no command was ever issued for this meter
    return {"meter_id": meter_id, "shadow": shadow, "device": device}


@router.get("/meters/{meter_id}/commands", tags=["meters"], summary="命令记录 · Commands for a meter")
async def meter_commands(
    meter_id: ObjectId, upstreams: Service, principal: Annotated[Principal, Depends(require(Action.COMMANDS_READ))]
) -> Any:
    _all_estates(principal)
    return await upstreams.call("control", "GET", "/v1/commands", params={"meter_id": meter_id})


@router.get("/alarms", tags=["alarms"], summary="告警 · Alarms")
async def alarms(
    upstreams: Service,
    principal: Annotated[Principal, Depends(require(Action.ALARMS_READ))],
    source_id: str | None = None,
    alarm_type: str | None = None,
    state: str | None = None,
) -> Any:
    _all_estates(principal)
    params = {k: v for k, v in {"source_id": source_id, "alarm_type": alarm_type, "state": state}.items() if v}
    return await upstreams.call("alarm", "GET", "/v1/alarms", params=params)
