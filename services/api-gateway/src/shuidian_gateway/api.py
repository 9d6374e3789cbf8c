"""Public REST API (v1) composed from the internal services. Staff routes need the staff bearer key;
tenant identity, roles and API keys for integrators come with the identity subsystem."""

from __future__ import annotations

import hmac
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.upstream import UpstreamError, Upstreams
from shuidian_kit.errors import ServiceError
from shuidian_shared.money import Money

bearer = HTTPBearer(auto_error=False, description="Staff API key")


class Unauthorised(ServiceError):
    status_code = 401
    code = "unauthorised"


def _upstreams(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


def require_staff(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    settings: GatewaySettings = request.app.state.settings
    expected = settings.staff_api_key.get_secret_value().encode()
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorised("a valid staff API key is required (Authorization: Bearer <key>)")
    request.state.principal = "staff"
    return "staff"


Service = Annotated[Upstreams, Depends(_upstreams)]
router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_staff)])


class TopUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount": "50.00", "channel": "cash"}]})

    amount: Money = Field(description="CNY, decimal string, > 0")
    channel: str = Field(default="cash", pattern="^(cash|bank|wechat|alipay|sandbox)$")
    reference: str | None = Field(default=None, max_length=100, description="receipt or provider transaction id")


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
async def account(account_id: str, upstreams: Service) -> Any:
    return await upstreams.call("billing", "GET", f"/v1/accounts/{account_id}")


@router.post(
    "/accounts/{account_id}/topups",
    response_model=PaymentOut,
    status_code=201,
    tags=["accounts"],
    summary="充值 · Top up (idempotent)",
)
async def top_up(
    account_id: str,
    body: TopUpIn,
    upstreams: Service,
    idempotency_key: Annotated[str, Header(min_length=8, max_length=100)],
) -> Any:
    return await upstreams.call(
        "billing",
        "POST",
        f"/v1/accounts/{account_id}/topups",
        json=body.model_dump(mode="json"),
        headers={"Idempotency-Key": idempotency_key},
    )


@router.get("/meters/{meter_id}", tags=["meters"], summary="表计状态 · Meter relay shadow and device state")
async def meter(meter_id: str, upstreams: Service) -> dict[str, Any]:
    device = await upstreams.call("collector", "GET", f"/v1/meters/{meter_id}/state")
    try:
        shadow = await upstreams.call("control", "GET", f"/v1/meters/{meter_id}/shadow")
    except UpstreamError as err:
        if err.status_code != 404:
            raise
        shadow = None  # no command was ever issued for this meter
    return {"meter_id": meter_id, "shadow": shadow, "device": device}


@router.get("/meters/{meter_id}/commands", tags=["meters"], summary="命令记录 · Commands for a meter")
async def meter_commands(meter_id: str, upstreams: Service) -> Any:
    return await upstreams.call("control", "GET", "/v1/commands", params={"meter_id": meter_id})


@router.get("/alarms", tags=["alarms"], summary="告警 · Alarms")
async def alarms(
    upstreams: Service, source_id: str | None = None, alarm_type: str | None = None, state: str | None = None
) -> Any:
    params = {k: v for k, v in {"source_id": source_id, "alarm_type": alarm_type, "state": state}.items() if v}
    return await upstreams.call("alarm", "GET", "/v1/alarms", params=params)
