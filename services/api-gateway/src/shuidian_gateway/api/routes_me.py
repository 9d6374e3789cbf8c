"""Tenant API (`/v1/me/…`, mobile-first): only what the tenant's active leases cover.

Every object a tenant names is checked against their scope (billing's tenant scope, cached for a
few seconds); anything else is a 404 that reads the same whether the object exists or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text

from shuidian_gateway.adapters.data_steps import DataStep, is_done, record_done
from shuidian_gateway.adapters.readcache import BalanceReadModel, CachedBalance
from shuidian_gateway.adapters.scopes import TenantScopes
from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.api.auth import Tenant, client_address, utcnow
from shuidian_gateway.api.conventions import (
    ERRORS,
    Amount,
    Cursor,
    IdempotencyKey,
    IfMatch,
    Limit,
    MonthPath,
    ObjectId,
    Page,
    page_of_all,
    upstream_key,
    version_etag,
    version_of,
)
from shuidian_gateway.api.deps import Idempotency, UpstreamsDep, container_of
from shuidian_gateway.domain.policy import Principal, Scope
from shuidian_gateway.errors import ObjectNotFound, PreconditionFailed
from shuidian_shared.contracts import alarm as alarm_contract
from shuidian_shared.contracts import billing as billing_contract
from shuidian_shared.messages import AwareDatetime
from shuidian_shared.money import CENT, Money, Quantity

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/me", tags=["tenant"], responses=ERRORS)
JSON = "application/json"


async def _scopes(request: Request) -> TenantScopes:
    scopes = container_of(request).scopes
    return scopes


Upstream = UpstreamsDep
Scopes = Annotated[TenantScopes, Depends(_scopes)]


async def scope_of(principal: Principal, scopes: TenantScopes) -> Scope:
    assert principal.tenant_id is not None  # the Tenant dependency guarantees it
    return await scopes.of(principal.tenant_id)


async def owned(principal: Principal, scopes: TenantScopes, kind: str, object_id: str) -> None:
    """404 unless the object is the tenant's (the same answer whether it exists or not)."""
    if not (await scope_of(principal, scopes)).owns(kind, object_id):
        raise ObjectNotFound(f"no such {kind} / 未找到")


async def optional(call: Any) -> Any:
    """A backend read that may not exist yet (501) or have nothing (404): None instead."""
    try:
        return await call
    except UpstreamError as err:
        if err.status_code in (404, 501):
            return None
        raise


class MeOut(BaseModel):
    tenant_id: str
    accounts: list[str]
    rooms: list[str]
    meters: list[str]


@router.get("", response_model=MeOut, summary="我的房间、表计和账户 · What my leases cover")
async def me(principal: Tenant, scopes: Scopes) -> MeOut:
    scope = await scope_of(principal, scopes)
    return MeOut(
        tenant_id=scope.tenant_id,
        accounts=sorted(scope.accounts),
        rooms=sorted(scope.rooms),
        meters=sorted(scope.meters),
    )


def _own_leases(principal: Principal, room: Any, room_id: str) -> dict[str, Any]:
    """Billing's room as its tenant may see it: the leases are theirs only, never a previous or next household's."""
    if not isinstance(room, dict):
        return {"room_id": room_id}
    leases = room.get("leases")
    if not isinstance(leases, list):
        return room
    return {**room, "leases": [x for x in leases if isinstance(x, dict) and x.get("tenant_id") == principal.tenant_id]}


@router.get("/rooms", response_model=Page, summary="我的房间 · My rooms")
async def rooms(
    principal: Tenant, scopes: Scopes, upstreams: Upstream, limit: Limit = 50, cursor: Cursor = None
) -> Any:
    ids = sorted((await scope_of(principal, scopes)).rooms)
    found = await asyncio.gather(*(optional(upstreams.call("billing", "GET", f"/v1/rooms/{r}")) for r in ids))
    return page_of_all([_own_leases(principal, f, r) for r, f in zip(ids, found, strict=True)], limit, cursor, None)


@router.get(
    "/rooms/{room_id}",
    response_model=billing_contract.RoomDetailOut,
    summary="房间 · One of my rooms (with my leases of it)",
)
async def room(room_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    await owned(principal, scopes, "room", room_id)
    found = await optional(upstreams.call("billing", "GET", f"/v1/rooms/{room_id}"))
    if not isinstance(found, dict):
        raise ObjectNotFound("no such room / 未找到")
    return JSONResponse(_own_leases(principal, found, room_id))


class LiveMeter(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "meter_id": "E-1-101",
                    "device": {"online": True, "relay": "closed"},
                    "last_reading": {
                        "meter_id": "E-1-101",
                        "sampled_at": "2026-12-06T10:00:00Z",
                        "registers": {"energy_active_import_total": "1234.56"},
                    },
                }
            ]
        }
    )

    meter_id: str
    device: dict[str, Any] | None = Field(
        description="collector's device state (online, relay/valve, last reading time)"
    )
    last_reading: dict[str, Any] | None = Field(
        description="the meter's last billed reading: `sampled_at` and `registers` (null before the first)"
    )


async def _live(upstreams: Upstreams, meter_id: str) -> LiveMeter:
    # The device state is the collector's; the last reading is the last one billing priced (its register
    # watermarks): the collector keeps no reading values.
    device, reading = await asyncio.gather(
        optional(upstreams.call("collector", "GET", f"/v1/meters/{meter_id}/state")),
        optional(upstreams.call("billing", "GET", f"/v1/meters/{meter_id}/reading")),
    )
    return LiveMeter(meter_id=meter_id, device=device, last_reading=reading)


@router.get("/meters", response_model=list[LiveMeter], summary="我的表计及实时值 · My meters with live values")
async def meters(principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    ids = sorted((await scope_of(principal, scopes)).meters)
    return await asyncio.gather(*(_live(upstreams, m) for m in ids))


@router.get("/meters/{meter_id}", response_model=LiveMeter, summary="表计实时值 · Live values of one of my meters")
async def meter(meter_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    await owned(principal, scopes, "meter", meter_id)
    return await _live(upstreams, meter_id)


class BalanceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "A101",
                    "name": "1-101",
                    "balance": "35.20",
                    "available": "34.87",
                    "available_exact": "34.8745000000",
                    "level": "ok",
                    "sequence": 12,
                }
            ]
        }
    )

    account_id: str
    name: str
    balance: Money
    available: Money = Field(description="balance less the current hour's charges not yet posted, in fen")
    available_exact: Quantity = Field(description="`available` at full precision, before it is cut to the fen")
    level: str = Field(description="ok, low_1, low_2 or exhausted")
    sequence: int


def fen(exact: Decimal) -> Decimal:
    """Money shown to a tenant: whole fen, cut toward zero (the rule every posting follows), never "-0.00"."""
    shown = exact.quantize(CENT, rounding=ROUND_DOWN)
    return shown if shown else Decimal("0.00")


class BilledAccount(BaseModel):
    """What the tenant API reads of billing's account."""

    account_id: str
    name: str
    balance: Money
    available: Quantity
    level: str
    sequence: int


def balance_read_model(upstreams: Upstreams, ttl: float) -> BalanceReadModel:
    """The gateway's balance read model, seeded from billing's account read."""

    async def fetch(account_id: str) -> CachedBalance:
        billed = BilledAccount.model_validate(await upstreams.call("billing", "GET", f"/v1/accounts/{account_id}"))
        found = BalanceOut(
            **billed.model_dump(exclude={"available"}),
            available=fen(billed.available),
            available_exact=billed.available,
        )
        return CachedBalance(found.sequence, found.model_dump_json().encode())

    return BalanceReadModel(ttl, fetch)


async def _balances(request: Request) -> BalanceReadModel:
    balances = container_of(request).balances
    return balances


Balances = Annotated[BalanceReadModel, Depends(_balances)]
BALANCE_NOTE = (
    "Served from the gateway's balance read model: at most `GATEWAY_BALANCE_CACHE_SECONDS` (2 s) old, "
    "refreshed as soon as billing announces a level change (BalanceEvent)."
)


@router.get(
    "/accounts",
    response_model=list[BalanceOut],
    summary="我的余额 · Balances of my accounts",
    description=BALANCE_NOTE,
)
async def accounts(principal: Tenant, scopes: Scopes, balances: Balances) -> Response:
    ids = sorted((await scope_of(principal, scopes)).accounts)
    found = await asyncio.gather(*(balances.balance(a) for a in ids))
    return Response(b"[" + b",".join(f.body for f in found) + b"]", media_type=JSON)


@router.get(
    "/accounts/{account_id}",
    response_model=BalanceOut,
    summary="余额 · Balance of one of my accounts",
    description=BALANCE_NOTE,
)
async def account(account_id: ObjectId, principal: Tenant, scopes: Scopes, balances: Balances) -> Response:
    await owned(principal, scopes, "account", account_id)
    return Response((await balances.balance(account_id)).body, media_type=JSON)


Granularity = Literal["hour", "day", "month"]
USAGE_NOTE = (
    " Each bucket's `cost` is in fen (cut toward zero); `cost_exact` is the unrounded figure the ledger posts from."
)


class TenantUsageBucket(billing_contract.UsageBucket):
    cost: Quantity = Field(description="in fen, cut toward zero (what the ledger posts)")
    cost_exact: Quantity = Field(description="exact, before rounding to the fen")


class TenantUsageOut(billing_contract.AccountUsageOut):
    """An account's usage history as its tenant sees money."""

    buckets: list[TenantUsageBucket]  # type: ignore[assignment]


def usage_in_fen(found: Any) -> Any:
    """Billing's usage history as a tenant sees money: each bucket's cost in fen, the exact cost beside it."""
    if not isinstance(found, dict) or not isinstance(found.get("buckets"), list):
        return found
    buckets = []
    for bucket in found["buckets"]:
        if isinstance(bucket, dict) and isinstance(bucket.get("cost"), str):
            exact = Decimal(bucket["cost"])
            bucket = {**bucket, "cost": str(fen(exact)), "cost_exact": bucket["cost"]}
        buckets.append(bucket)
    return {**found, "buckets": buckets}


@router.get(
    "/accounts/{account_id}/usage",
    response_model=TenantUsageOut,
    summary="用量历史（含费用）· Usage history with cost",
    description="Per local hour, day or month and utility: quantity and cost (billing's usage history)." + USAGE_NOTE,
)
async def usage(
    account_id: ObjectId,
    principal: Tenant,
    scopes: Scopes,
    upstreams: Upstream,
    granularity: Granularity = "day",
    start: Annotated[AwareDatetime | None, Query(description="inclusive")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
) -> Any:
    await owned(principal, scopes, "account", account_id)
    params = {"granularity": granularity, "start": start, "end": end}
    found = await upstreams.call(
        "billing",
        "GET",
        f"/v1/accounts/{account_id}/usage",
        params={k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items() if v},
    )
    return JSONResponse(usage_in_fen(found))


@router.get(
    "/accounts/{account_id}/usage/today",
    response_model=TenantUsageOut,
    summary="今日用量 · Today's usage so far, per hour",
    description="Billing's hourly usage since local midnight, at most `GATEWAY_USAGE_TODAY_CACHE_SECONDS` (15 s) old."
    + USAGE_NOTE,
)
async def usage_today(
    account_id: ObjectId, request: Request, principal: Tenant, scopes: Scopes, upstreams: Upstream
) -> Response:
    await owned(principal, scopes, "account", account_id)
    settings = container_of(request).settings
    cache = container_of(request).usage_today
    local = utcnow().astimezone(ZoneInfo(settings.timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).isoformat()

    async def fetch() -> bytes:
        params = {"granularity": "hour", "start": midnight}
        found = await upstreams.call("billing", "GET", f"/v1/accounts/{account_id}/usage", params=params)
        return json.dumps(usage_in_fen(found), ensure_ascii=False, separators=(",", ":")).encode()

    return Response(await cache.get((account_id, midnight), fetch), media_type=JSON)


TxnId = Annotated[uuid.UUID, Path(description="a ledger transaction of the account")]


async def statement_owned(
    principal: Principal, scopes: TenantScopes, upstreams: Upstreams, account_id: str, month: str
) -> None:
    """404 unless the statement is the tenant's: an account of an active lease, or of an ended lease of theirs
    for a month the lease covered (a moved-out household keeps its final statements)."""
    if (await scope_of(principal, scopes)).owns("account", account_id):
        return
    assert principal.tenant_id is not None
    found = await optional(upstreams.call("billing", "GET", f"/v1/tenants/{principal.tenant_id}/leases"))
    for lease in billing_contract.TenantLeasesOut.model_validate(found).leases if found else []:
        if lease.account_id != account_id or lease.move_out is None:
            continue
        last_day = lease.move_out - timedelta(days=1)  # move-out is the first day no longer leased
        if f"{lease.move_in:%Y-%m}" <= month <= f"{last_day:%Y-%m}":
            return
    raise ObjectNotFound("no such account / 未找到")


@router.get(
    "/accounts/{account_id}/statements/{month}",
    summary="月结单 · A monthly statement as JSON, CSV or PDF",
    response_model=billing_contract.StatementOut,
    responses={200: {"content": {"application/pdf": {}, "text/csv": {}}, "description": "the statement"}},
)
async def statement(
    account_id: ObjectId,
    month: MonthPath,
    principal: Tenant,
    scopes: Scopes,
    upstreams: Upstream,
    format: Literal["json", "csv", "pdf"] = "json",
) -> Any:
    await statement_owned(principal, scopes, upstreams, account_id, month)
    raw = await upstreams.raw(
        "billing", "GET", f"/v1/accounts/{account_id}/statements/{month}", params={"format": format}
    )
    media = raw.headers.get("content-type", "application/json")
    headers = {k: v for k, v in raw.headers.items() if k.lower() == "content-disposition"}
    return Response(raw.content, media_type=media, headers=headers)


@router.get(
    "/accounts/{account_id}/transactions/{txn_id}/explain",
    response_model=billing_contract.ExplanationOut,
    summary="费用明细解释 · Line-by-line explanation of a charge",
    description="Readings, tariff version, segment or tier, quantity, price and rounding of one ledger transaction.",
)
async def explain(account_id: ObjectId, txn_id: TxnId, principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    await owned(principal, scopes, "account", account_id)
    found = await optional(upstreams.call("billing", "GET", f"/v1/ledger/transactions/{txn_id}/explain"))
    entries = found.get("entries", []) if isinstance(found, dict) else []
    if not any(e.get("ledger_account") == f"household:{account_id}" for e in entries if isinstance(e, dict)):
        raise ObjectNotFound("no such transaction / 未找到")
    return JSONResponse(found)


class TopUpIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"amount": "50.00", "provider": "sandbox"},
                {"amount": "50.00", "provider": "wechat", "method": "jsapi", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
                {"amount": "50.00", "provider": "alipay", "method": "wap"},
            ]
        },
    )

    amount: Amount
    provider: Literal["sandbox", "wechat", "alipay"] = "sandbox"
    method: Literal["native", "jsapi", "h5", "precreate", "wap"] | None = Field(
        default=None,
        description="微信 native（扫码）、jsapi（微信内）、h5（手机浏览器）；支付宝 precreate（扫码）、wap（手机网页）. "
        "WeChat native / jsapi (inside WeChat, needs openid) / h5 (phone browser); Alipay precreate / wap. "
        "Omitted: the provider's QR-code method.",
    )
    openid: str = Field(
        default="",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="jsapi: the payer's openid under the operator's WeChat app",
    )


class PayParams(BaseModel):
    """What the payer's app needs to pay, as the provider gave it (only the fields of the order's method)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    code_url: str | None = Field(default=None, description="WeChat native / sandbox: show as a QR code")
    qr_code: str | None = Field(default=None, description="Alipay precreate: show as a QR code")
    h5_url: str | None = Field(default=None, description="WeChat h5: open in the phone's browser")
    pay_url: str | None = Field(default=None, description="Alipay wap: open in the phone's browser")
    # The JSAPI names are WeixinJSBridge's own, so the page hands the object over as it is.
    app_id: str | None = Field(default=None, alias="appId", description="jsapi: for getBrandWCPayRequest")
    time_stamp: str | None = Field(default=None, alias="timeStamp")
    nonce_str: str | None = Field(default=None, alias="nonceStr")
    package: str | None = Field(default=None, description="jsapi: prepay_id=…")
    sign_type: str | None = Field(default=None, alias="signType")
    pay_sign: str | None = Field(default=None, alias="paySign")


class PaymentOrderOut(BaseModel):
    order_id: str
    account_id: str
    amount: Money
    provider: str
    method: str = Field(default="native", description="how the payer pays: native, jsapi, h5, precreate or wap")
    status: str = Field(description="open until the provider confirms, then paid (closed or expired: not paid)")
    pay: PayParams | None = Field(
        default=None, description="the provider's pay parameters; null while the provider has not been reached"
    )
    created_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    paid_at: AwareDatetime | None = None
    payment_id: uuid.UUID | None = None


@router.post(
    "/accounts/{account_id}/topups",
    status_code=201,
    response_model=PaymentOrderOut,
    summary="在线充值 · Start an online top-up (idempotent)",
    description="Creates a payment order with the provider (the sandbox in dev) and returns in `pay` what the "
    "payer's app needs: a QR code to scan (`code_url`, `qr_code`), a page to open (`h5_url`, `pay_url`) or the "
    "signed JSAPI package for WeixinJSBridge. The balance rises when the provider's signed notification reaches "
    "billing. Poll `GET /v1/me/payments/{order_id}`. H5 orders carry the payer's address as this gateway sees it "
    "(behind GATEWAY_TRUSTED_PROXIES: the nearest untrusted X-Forwarded-For hop).",
)
async def top_up(
    account_id: ObjectId,
    body: TopUpIn,
    request: Request,
    principal: Tenant,
    scopes: Scopes,
    upstreams: Upstream,
    store: Idempotency,
    idempotency_key: IdempotencyKey,
) -> Any:
    await owned(principal, scopes, "account", account_id)
    sent: dict[str, str] = {"account_id": account_id, "amount": str(body.amount), "provider": body.provider}
    if body.method is not None:
        sent["method"] = body.method
    if body.openid:
        sent["openid"] = body.openid
    if body.method == "h5":  # WeChat checks the payer's address against the phone that opens h5_url
        sent["client_ip"] = client_address(request, container_of(request).settings.trusted_proxy_networks)

    async def forward() -> tuple[int, Any]:
        raw = await upstreams.raw(
            "billing",
            "POST",
            "/v1/payments/orders",
            json=sent,
            headers={"Idempotency-Key": upstream_key(principal, idempotency_key)},
        )
        return 201, PaymentOrderOut.model_validate(raw.json()).model_dump(mode="json", by_alias=True)

    return await store.run(
        principal, idempotency_key, request, {"account_id": account_id, **body.model_dump(mode="json")}, forward
    )


class PaymentMethodOut(BaseModel):
    provider: Literal["sandbox", "wechat", "alipay"]
    methods: list[Literal["native", "jsapi", "h5", "precreate", "wap"]] = Field(
        description="the QR-code method first; jsapi only inside WeChat, h5 / wap on a phone's browser"
    )


@router.get(
    "/accounts/{account_id}/payment-methods",
    response_model=list[PaymentMethodOut],
    summary="支付方式 · How I can top up this account",
    description="The providers the operator has configured (the sandbox only in dev and test) and their methods.",
)
async def payment_methods(
    account_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: Upstream
) -> list[PaymentMethodOut]:
    await owned(principal, scopes, "account", account_id)
    found = await upstreams.call("billing", "GET", "/v1/payments/methods", params={"account_id": account_id})
    return [PaymentMethodOut.model_validate(m) for m in found if m.get("provider") in ("sandbox", "wechat", "alipay")]


@router.get("/payments/{order_id}", response_model=PaymentOrderOut, summary="支付状态 · Status of one of my top-ups")
async def payment(order_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    order = await optional(upstreams.call("billing", "GET", f"/v1/payments/orders/{order_id}"))
    if not isinstance(order, dict) or not (await scope_of(principal, scopes)).owns(
        "account", str(order.get("account_id"))
    ):
        raise ObjectNotFound("no such payment / 未找到")
    return order


@router.get("/payments", response_model=Page, summary="缴费记录 · My payments, newest first")
async def payments(
    principal: Tenant, scopes: Scopes, upstreams: Upstream, limit: Limit = 20, cursor: Cursor = None
) -> Any:
    ids = sorted((await scope_of(principal, scopes)).accounts)
    found = await asyncio.gather(
        *(upstreams.call("billing", "GET", "/v1/payments", params={"account_id": a, "limit": 1000}) for a in ids)
    )
    items = [p for f in found for p in (f.get("items", []) if isinstance(f, dict) else f)]
    return page_of_all(items, limit, cursor, "-created_at")


@router.get("/alarms", response_model=Page, summary="我的告警 · Alarms about my accounts and meters")
async def alarms(
    principal: Tenant,
    scopes: Scopes,
    upstreams: Upstream,
    state: Annotated[Literal["active", "acknowledged", "cleared"] | None, Query()] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Any:
    scope = await scope_of(principal, scopes)
    sources = sorted(scope.accounts | scope.meters)
    params = {"state": state} if state else {}
    found = await asyncio.gather(
        *(
            upstreams.call("alarm", "GET", "/v1/alarms", params={"source_id": s, "limit": 1000, **params})
            for s in sources
        )
    )
    items = [a for f in found for a in f]
    return page_of_all(items, limit, cursor, "-raised_at")


class Channel(StrEnum):
    """How alarm reaches the tenant: app push, SMS to the phone on file, e-mail to the address on file."""

    APP = "app"
    SMS = "sms"
    EMAIL = "email"


@router.get(
    "/alarms/{alarm_id}", response_model=alarm_contract.AlarmOut, summary="告警 · One alarm about my account or meters"
)
async def alarm(alarm_id: uuid.UUID, principal: Tenant, scopes: Scopes, upstreams: Upstream) -> Any:
    found = await optional(upstreams.call("alarm", "GET", f"/v1/alarms/{alarm_id}"))
    scope = await scope_of(principal, scopes)
    if not isinstance(found, dict) or str(found.get("source_id")) not in scope.accounts | scope.meters:
        raise ObjectNotFound("no such alarm / 未找到")
    return JSONResponse(found)


class NotificationSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"low_balance": True, "alarms": True, "channels": ["app", "sms"], "quiet_hours": "22:00-07:00"}
            ]
        },
    )

    low_balance: bool = True
    alarms: bool = True
    statements: bool = True
    channels: list[Channel] = Field(default_factory=lambda: [Channel("app")], max_length=4)
    quiet_hours: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


def _engine(request: Request) -> Any:
    runtime = container_of(request).runtime
    return runtime.engine


# Alarm owns a tenant's notification settings (it is the service that sends): these routes proxy to
# `/v1/tenants/{tenant_id}/notification-settings` there, always for the signed-in tenant. The phone (and e-mail,
# should billing ever keep one) comes from billing's tenant record with every save.
_SETTINGS_FIELDS = tuple(NotificationSettings.model_fields)


def _alarm_settings_path(tenant_id: str) -> str:
    return f"/v1/tenants/{tenant_id}/notification-settings"


async def _contacts(upstreams: Upstreams, tenant_id: str) -> dict[str, str | None]:
    record = await optional(upstreams.call("billing", "GET", f"/v1/tenants/{tenant_id}"))
    record = record if isinstance(record, dict) else {}
    return {"phone": record.get("phone") or None, "email": record.get("email") or None}


async def _save(
    upstreams: Upstreams, tenant_id: str, settings: NotificationSettings, expected: int | None
) -> dict[str, Any]:
    body = settings.model_dump(mode="json")
    contacts = await _contacts(upstreams, tenant_id) if {"sms", "email"} & set(body["channels"]) else {}
    try:
        saved: dict[str, Any] = await upstreams.call(
            "alarm", "PUT", _alarm_settings_path(tenant_id), json={**body, **contacts, "expected_version": expected}
        )
    except UpstreamError as err:
        if err.status_code == 409:
            raise PreconditionFailed(
                "your settings changed since you read them; fetch them again / 设置已变更，请刷新"
            ) from err
        raise
    return saved


async def migrate_saved_settings(engine: Any, upstreams: Upstreams, tenant_id: str | None = None) -> int:
    """Push settings saved in the gateway's own table (before alarm owned them) to alarm, once: a push only
    creates (expected version 0), so it never overwrites what the tenant saved since and may run again (every
    start, every replica). A channel that cannot be served (sms with no phone on file, e-mail, wechat) is dropped; with
    none left the tenant keeps the app push. How many were pushed. Runs for one tenant or all of them."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT tenant_id, settings FROM gateway.notification_settings "
                    "WHERE CAST(:t AS text) IS NULL OR tenant_id = :t ORDER BY tenant_id"
                ),
                {"t": tenant_id},
            )
        ).all()
    pushed = 0
    for row in rows:
        saved = dict(row.settings)
        if isinstance(saved.get("channels"), list):  # WeChat was once accepted and never sent: drop it
            saved["channels"] = [c for c in saved["channels"] if c != "wechat"] or ["app"]
        try:
            settings = NotificationSettings.model_validate(saved)
        except ValidationError:
            log.warning(
                "notification settings of tenant %s in the gateway table do not validate; not pushed", row.tenant_id
            )
            continue
        try:
            try:
                await _save(upstreams, row.tenant_id, settings, 0)
            except UpstreamError as err:
                if err.status_code != 422:
                    raise
                servable = [c for c in settings.channels if c is Channel.APP] or [Channel.APP]
                await _save(upstreams, row.tenant_id, settings.model_copy(update={"channels": servable}), 0)
            pushed += 1
        except PreconditionFailed:
            continue  # alarm already holds settings for this tenant: theirs are newer
    return pushed


async def migrate_until_done(engine: Any, upstreams: Upstreams, retry_seconds: float = 30.0) -> int:
    """`migrate_saved_settings` for every tenant, retried while alarm or billing is away; how many were pushed."""
    while True:
        try:
            pushed = await migrate_saved_settings(engine, upstreams)
        except UpstreamError as err:
            log.warning(
                "pushing saved notification settings to alarm failed (%s); retrying in %s s", err, retry_seconds
            )
            await asyncio.sleep(retry_seconds)
            continue
        log.info("notification settings saved in the gateway before: %d pushed to alarm", pushed)
        return pushed


# A one-time data migration, not start-up work: the table it reads is no longer written (alarm owns the settings),
# so once every saved row has been offered to alarm the step is recorded and later starts skip it. A new version
# of the step (a changed rule) runs once more.
SETTINGS_TO_ALARM = DataStep("notification-settings-to-alarm", 1)


async def push_saved_settings_once(engine: Any, upstreams: Upstreams, retry_seconds: float = 30.0) -> None:
    """The start-up step: `migrate_until_done`, then recorded in `gateway.data_steps`; nothing but one lookup once
    it is recorded. Two replicas starting together may both run it: a push never overwrites."""
    if await is_done(engine, SETTINGS_TO_ALARM):
        return
    pushed = await migrate_until_done(engine, upstreams, retry_seconds)
    await record_done(engine, SETTINGS_TO_ALARM, f"{pushed} pushed")


@router.get(
    "/notification-settings", response_model=NotificationSettings, summary="通知设置 · My notification settings (ETag)"
)
async def get_notifications(request: Request, response: Response, principal: Tenant, upstreams: Upstream) -> Any:
    assert principal.tenant_id is not None  # the Tenant dependency guarantees it
    path = _alarm_settings_path(principal.tenant_id)
    found = await upstreams.call("alarm", "GET", path)
    if found["version"] == 0 and await migrate_saved_settings(_engine(request), upstreams, principal.tenant_id):
        found = await upstreams.call("alarm", "GET", path)
    response.headers["ETag"] = version_etag(found["version"])
    return {k: found[k] for k in _SETTINGS_FIELDS}


@router.put(
    "/notification-settings",
    response_model=NotificationSettings,
    summary="修改通知设置 · Change my notification settings (If-Match)",
    description="Alarm sends what these say: low balance and the tenant-facing alarms (leak, usage spike, electric "
    "leakage, overload) by app push, SMS (to the phone on your tenant record) or e-mail, held during quiet hours "
    "except critical ones. 422 when a channel cannot be served (sms with no phone on file, e-mail with no "
    "address); 412 when If-Match names an older version.",
)
async def put_notifications(
    body: NotificationSettings, response: Response, principal: Tenant, upstreams: Upstream, if_match: IfMatch = None
) -> Any:
    assert principal.tenant_id is not None
    saved = await _save(upstreams, principal.tenant_id, body, version_of(if_match))
    response.headers["ETag"] = version_etag(saved["version"])
    return {k: saved[k] for k in _SETTINGS_FIELDS}
