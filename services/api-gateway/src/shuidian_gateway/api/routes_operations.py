"""Operations API: the backend routes an operator or integrator needs beyond the everyday staff table —
meter events, common meters and the monthly 公摊 run, statements for staff, bank imports and their review
queue, holds, deferrals, keep-power lifting, holiday calendars, alarm rules and subscriptions, and the
gateway's own audit log.

Each route is written out (typed body, action, estate rule) because most of them do something the staff
table's mechanism does not: DELETEs that carry a reason, a CSV in GB18030, a document in three formats, an
audit read from the gateway's own database. Estate-scoped principals reach an object only in their estates
(404 outside them); what spans every estate (calendars, bank statements, the audit log) needs an all-estates
principal (403 otherwise). Writes are audited by the gateway's AuditWrites middleware like every other write.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import httpx
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from sqlalchemy import text

from shuidian_gateway.adapters.idempotency import IdempotencyStore
from shuidian_gateway.adapters.upstream import Upstreams
from shuidian_gateway.api.auth import require
from shuidian_gateway.api.conventions import (
    ERRORS,
    ISO_DAY,
    ISO_INSTANT,
    Cursor,
    IdempotencyKey,
    Limit,
    MonthPath,
    Quantity,
    Text,
    decode_cursor,
    encode_cursor,
    page_of_all,
    upstream_key,
    written_as,
)
from shuidian_gateway.api.deps import Idempotency, UpstreamsDep, container_of
from shuidian_gateway.api.routes_staff import BatchIn, estate_meters, estate_of
from shuidian_gateway.domain.policy import Action, Principal
from shuidian_gateway.errors import Forbidden, InvalidRequest, ObjectNotFound
from shuidian_shared.contracts import alarm as alarm_contract
from shuidian_shared.contracts import billing as billing_contract
from shuidian_shared.contracts import control as control_contract
from shuidian_shared.contracts.alarm import NotificationOut, RuleOut, SubscriptionOut
from shuidian_shared.contracts.billing import CallbackOut, ReconciliationOut, RefundOut

IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Id = Annotated[str, Path(min_length=1, max_length=64, pattern=IDENT)]
Reason = Annotated[str, Query(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$", description="为什么 · why")]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=IDENT)]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")]
UPSTREAM_CAP = 1000
Row = TypeVar("Row", bound=BaseModel)
MAX_STATEMENT_BYTES = 5 * 1024 * 1024
# A bank statement's first row: two or more column names (quoted or not), no JSON or control characters.
BANK_CSV_HEADER = r"^\ufeff?[^,{}\[\]\x00-\x1f\x7f]+(,[^,{}\[\]\x00-\x1f\x7f]+)+\r?\n"

Instant = Annotated[
    AwareDatetime,
    BeforeValidator(written_as(ISO_INSTANT, "an instant with its offset, e.g. 2026-11-20T10:00:00+08:00")),
]
Day = Annotated[date, BeforeValidator(written_as(ISO_DAY, "a date, e.g. 2027-01-01"))]
router = APIRouter(prefix="/v1", responses=ERRORS)


class Paged(BaseModel, Generic[Row]):
    items: list[Row]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


# Rows of the listings below, as their backends answer them (billing, control, alarm).


class HoldOut(BaseModel):
    estate_id: str = Field(description='"*": every estate')
    reason: str
    until: datetime | None
    set_by: str
    set_at: datetime


class DeferralOut(BaseModel):
    meter_id: str
    account_id: str | None
    due_at: datetime | None
    reason: str
    created_at: datetime
    updated_at: datetime


class PolicyLogOut(BaseModel):
    id: int
    subject: str
    action: str
    detail: str
    actor: str
    at: datetime


Upstream = UpstreamsDep


def _needs(action: Action) -> Any:
    return Depends(require(action))


def _extra(action: Action) -> dict[str, Any]:
    return {"x-required-action": action.value}


def _doc(text_: str, action: Action) -> str:
    return f"{text_}\n\nNeeds `{action.value}`.".strip()


def _all_estates(principal: Principal) -> None:
    if not principal.all_estates:
        raise Forbidden("this spans every estate; it needs an all-estates role / 需全部小区权限")


async def _inside(principal: Principal, upstreams: Upstreams, kind: str, object_id: str) -> None:
    """An object outside the caller's estates does not exist for them (404, like the staff table)."""
    if principal.all_estates:
        return
    if not principal.may_see_estate(await estate_of(upstreams, kind, object_id)):
        raise ObjectNotFound(f"no such {kind}")


def _no_content() -> Response:
    return Response(status_code=204)


def _rows(found: Any) -> list[Any]:
    return list(found.get("items", [])) if isinstance(found, dict) else list(found or [])


# -- metering: meter events, common meters, the month's fixed fees and 公摊 (billing) -------------------------
def _event(example: dict[str, Any]) -> ConfigDict:
    base = {"at": "2026-11-20T10:00:00+08:00"}
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [{**example, **base}]})


class MeterReplacedIn(BaseModel):
    """换表: the old meter's last reading is billed, the new one counts from its first."""

    model_config = _event(
        {"kind": "replaced", "reason": "换表", "old_closing_register": "1523.4", "new_opening_register": "0"}
    )

    kind: Literal["replaced"]
    at: Instant
    reason: Text = Field(min_length=1, max_length=500)
    old_closing_register: Quantity = Field(description="the old meter's last reading")
    new_opening_register: Quantity = Field(description="the new meter's first reading")
    new_multiplier: Quantity | None = Field(default=None, description="the new CT ratio (default: unchanged)")
    new_register_max: Quantity | None = Field(default=None, description="the new register's maximum")


class MultiplierChangedIn(BaseModel):
    """CT 变比变更: consumption up to the change is priced at the old ratio."""

    model_config = _event(
        {"kind": "multiplier_changed", "reason": "更换互感器", "new_multiplier": "40", "register_at_change": "812.5"}
    )

    kind: Literal["multiplier_changed"]
    at: Instant
    reason: Text = Field(min_length=1, max_length=500)
    new_multiplier: Quantity = Field(description="the CT ratio from now on")
    register_at_change: Quantity = Field(description="the register at the change")


class RolloverIn(BaseModel):
    """走字翻转: the register wrapped past its maximum."""

    model_config = _event({"kind": "rollover", "reason": "走字翻转", "register_after": "12.3"})

    kind: Literal["rollover"]
    at: Instant
    reason: Text = Field(min_length=1, max_length=500)
    register_after: Quantity = Field(description="the register after the wrap")


MeterEventIn = Annotated[MeterReplacedIn | MultiplierChangedIn | RolloverIn, Body(discriminator="kind")]


class CommonMeterIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"utility": "electricity"}]})

    utility: Literal["electricity", "water"]
    effective_from: Instant | None = Field(default=None, description="default: now")


async def _once(
    request: Request,
    principal: Principal,
    store: IdempotencyStore,
    key: str,
    body: Any,
    send: Callable[[dict[str, str]], Awaitable[httpx.Response]],
    status: int,
) -> Any:
    """A money write under the gateway's Idempotency-Key: a replay returns the first answer. `send` makes the
    backend call with the headers given (the namespaced key, which the backend de-duplicates on too); `status` is
    the success status the route documents."""

    async def forward() -> tuple[int, Any]:
        raw = await send({"Idempotency-Key": upstream_key(principal, key)})
        return status, raw.json() if raw.content else None  # errors raise; success is the status documented

    return await store.run(principal, key, request, body, forward)


A_EVENT = Action.CORRECTIONS_CREATE


A_PREMISES_WRITE = Action.PREMISES_WRITE


A_RUN = Action.BILLING_RUN


A_PREMISES = Action.PREMISES_READ


A_ACCOUNTS = Action.ACCOUNTS_READ


@router.get(
    "/meters/{meter_id}/usage",
    response_model=billing_contract.MeterUsageOut,
    tags=["metering"],
    summary="表计用量 · A meter's usage and cost per local hour, day or month",
    description=_doc("`start`/`end`: aware ISO 8601 instants.", A_ACCOUNTS),
    openapi_extra=_extra(A_ACCOUNTS),
)
async def meter_usage(
    meter_id: Id,
    principal: Annotated[Principal, _needs(A_ACCOUNTS)],
    upstreams: Upstream,
    granularity: Literal["hour", "day", "month"] = "day",
    start: Instant | None = None,
    end: Instant | None = None,
) -> Any:
    await _inside(principal, upstreams, "meter", meter_id)
    params = {"granularity": granularity} | {
        k: v.isoformat() for k, v in (("start", start), ("end", end)) if v is not None
    }
    return await upstreams.call("billing", "GET", f"/v1/meters/{meter_id}/usage", params=params)


# -- statements for staff (billing) -----------------------------------------------------------------------
@router.get(
    "/accounts/{account_id}/statements/{month}",
    tags=["accounts"],
    summary="月结单 · An account's monthly statement as JSON, CSV or PDF",
    description=_doc("The statement a tenant gets, for staff: `format` json (default), csv or pdf.", A_ACCOUNTS),
    response_model=billing_contract.StatementOut,
    responses={200: {"content": {"text/csv": {}, "application/pdf": {}}, "description": "the statement"}},
    openapi_extra=_extra(A_ACCOUNTS),
)
async def statement(
    account_id: Id,
    month: MonthPath,
    principal: Annotated[Principal, _needs(A_ACCOUNTS)],
    upstreams: Upstream,
    format: Literal["json", "csv", "pdf"] = "json",
) -> Response:
    await _inside(principal, upstreams, "account", account_id)
    raw = await upstreams.raw(
        "billing", "GET", f"/v1/accounts/{account_id}/statements/{month}", params={"format": format}
    )
    headers = {k: v for k, v in raw.headers.items() if k.lower() == "content-disposition"}
    return Response(raw.content, media_type=raw.headers.get("content-type"), headers=headers)


# -- bank statements and the review queue (billing) --------------------------------------------------------
class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"account_id": "A101", "kind": "room"}]})

    account_id: Identifier
    kind: Literal["reference", "room"] = Field(description="reference: 缴费编号; room: 房号 as payers write it")


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"account_id": "A101"}]})

    account_id: Identifier


class DismissIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "已退回付款人"}]})

    reason: Text = Field(min_length=1, max_length=500)


A_RECONCILE = Action.PAYMENTS_RECONCILE


@router.post(
    "/payments/bank/imports",
    status_code=201,
    response_model=billing_contract.ImportOut,
    tags=["payments"],
    summary="银行流水导入 · Import a bank statement CSV (idempotent)",
    description=_doc(
        "Body: `text/csv` in UTF-8 or GB18030 as banks export it. Credit lines are matched to accounts by account "
        "id or a registered alias and credited; the rest go to the review queue. A line already imported is a "
        "duplicate, never a second credit. The importer is the signed-in caller.",
        A_RECONCILE,
    ),
    openapi_extra={
        **_extra(A_RECONCILE),
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string", "pattern": BANK_CSV_HEADER},
                    "example": "交易日期,交易流水号,付款人,金额,附言\n2026-11-20,T0001,张三,100.00,缴水电费 A101\n",
                }
            },
        },
    },
)
async def bank_import(
    request: Request,
    principal: Annotated[Principal, _needs(A_RECONCILE)],
    upstreams: Upstream,
    store: Idempotency,
    idempotency_key: IdempotencyKey,
    filename: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f/\\]*$")] = "statement.csv",
) -> Any:
    _all_estates(principal)  # a statement credits households of any estate
    if not request.headers.get("content-type", "").startswith("text/csv"):
        raise InvalidRequest("send the statement as text/csv / 请以 text/csv 上传")
    content = await request.body()
    if not content or len(content) > MAX_STATEMENT_BYTES:
        raise InvalidRequest(f"a statement is 1 byte to {MAX_STATEMENT_BYTES} bytes / 文件为空或过大")
    if not re.match(BANK_CSV_HEADER, _bank_text(content)):
        raise InvalidRequest("send a CSV whose first row names its columns / 首行须为列名")
    fingerprint = {"filename": filename, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}

    async def forward() -> tuple[int, Any]:
        raw = await upstreams.raw(
            "billing",
            "POST",
            "/v1/payments/bank/imports",
            content=content,
            headers={"Content-Type": "text/csv", "Idempotency-Key": upstream_key(principal, idempotency_key)},
            params={"imported_by": principal.name, "filename": filename},
        )
        return 201, raw.json() if raw.content else None

    return await store.run(principal, idempotency_key, request, fingerprint, forward)


def _bank_text(content: bytes) -> str:
    """The statement as text: UTF-8 or, as many banks export it, GB18030 ("" when it is neither)."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    return ""


ReviewId = Annotated[int, Path(ge=1, le=2**62)]


@router.get(
    "/payments/callbacks",
    response_model=Paged[CallbackOut],
    tags=["payments"],
    summary="支付回调 · Provider notifications received, newest first",
    description=_doc("`outcome`: accepted, replayed, rejected, amount_mismatch or ignored.", A_ACCOUNTS),
    openapi_extra=_extra(A_ACCOUNTS),
)
async def payment_callbacks(
    principal: Annotated[Principal, _needs(A_ACCOUNTS)],
    upstreams: Upstream,
    outcome: Literal["accepted", "replayed", "rejected", "amount_mismatch", "ignored"] | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    _all_estates(principal)
    params: dict[str, Any] = {"limit": UPSTREAM_CAP} | ({"outcome": outcome} if outcome else {})
    return page_of_all(
        _rows(await upstreams.call("billing", "GET", "/v1/payments/callbacks", params=params)), limit, cursor, None
    )


@router.get(
    "/payments/reconciliations",
    response_model=list[ReconciliationOut],
    tags=["payments"],
    summary="对账报告 · Each provider's daily bill against the ledger: settled vs booked, newest first",
    description=_doc(
        "Billing reconciles each provider's bill of the previous local day on its own every morning; "
        "each difference (missing, extra, amount) is also a review item (`/v1/payments/reviews`).",
        A_RECONCILE,
    ),
    openapi_extra=_extra(A_RECONCILE),
)
async def payment_reconciliations(
    principal: Annotated[Principal, _needs(A_RECONCILE)],
    upstreams: Upstream,
    bill_date: Day | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    _all_estates(principal)
    params: dict[str, Any] = {"limit": limit} | ({"bill_date": bill_date.isoformat()} if bill_date else {})
    return await upstreams.call("billing", "GET", "/v1/payments/reconciliations", params=params)


# -- cut-off protection: holds, deferrals, keep-power (control) ---------------------------------------------
class HoldIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "春节不停电", "until": "2027-02-20T00:00:00+08:00"}]}
    )

    reason: Text = Field(min_length=1, max_length=500)
    until: Instant | None = Field(default=None, description="null: until lifted")


class KeepPowerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "other", "note": "高温天气"}]})

    reason: Literal["elderly", "medical", "other"]
    note: Text = Field(default="", max_length=500)


A_COMMANDS = Action.COMMANDS_READ
A_TRIP = Action.COMMANDS_TRIP


@router.get(
    "/holds",
    response_model=Paged[HoldOut],
    tags=["commands"],
    summary="停断开关 · No-cut-off switches in force",
    description=_doc("`estate_id` `all` is the switch for every estate.", A_COMMANDS),
    openapi_extra=_extra(A_COMMANDS),
)
async def holds(
    principal: Annotated[Principal, _needs(A_COMMANDS)], upstreams: Upstream, limit: Limit = 50, cursor: Cursor = None
) -> Any:
    rows = _rows(await upstreams.call("control", "GET", "/v1/holds"))
    mine = [r for r in rows if principal.may_see_estate(str(r.get("estate_id"))) or r.get("estate_id") in ("*", "all")]
    return page_of_all(mine, limit, cursor, None)


async def _estate_or_all(principal: Principal, upstreams: Upstreams, estate_id: str) -> None:
    if estate_id == "all":
        _all_estates(principal)
    else:
        await _inside(principal, upstreams, "estate", estate_id)


@router.get(
    "/deferrals",
    response_model=Paged[DeferralOut],
    tags=["commands"],
    summary="延迟停电 · Trips waiting for a protected window or a switch to end",
    description=_doc("", A_COMMANDS),
    openapi_extra=_extra(A_COMMANDS),
)
async def deferrals(
    principal: Annotated[Principal, _needs(A_COMMANDS)],
    upstreams: Upstream,
    meter_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=IDENT)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    if meter_id is not None:
        await _inside(principal, upstreams, "meter", meter_id)
    params: dict[str, Any] = {"limit": UPSTREAM_CAP} | ({"meter_id": meter_id} if meter_id else {})
    rows = _rows(await upstreams.call("control", "GET", "/v1/deferrals", params=params))
    if not principal.all_estates:
        meters = await estate_meters(upstreams, principal.estates)
        rows = [r for r in rows if str(r.get("meter_id")) in meters]
    return page_of_all(rows, limit, cursor, None)


@router.get(
    "/policy-log",
    response_model=Paged[PolicyLogOut],
    tags=["audit"],
    summary="策略变更记录 · Who changed which cut-off policy, newest first",
    description=_doc(
        "Keep-power, holds, estate policies and calendars; `subject` an estate, account or year.", Action.AUDIT_READ
    ),
    openapi_extra=_extra(Action.AUDIT_READ),
)
async def policy_log(
    principal: Annotated[Principal, _needs(Action.AUDIT_READ)],
    upstreams: Upstream,
    subject: Annotated[str | None, Query(min_length=1, max_length=64, pattern=IDENT)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    _all_estates(principal)
    params: dict[str, Any] = {"limit": UPSTREAM_CAP} | ({"subject": subject} if subject else {})
    return page_of_all(
        _rows(await upstreams.call("control", "GET", "/v1/policy-log", params=params)), limit, cursor, None
    )


# -- commands: a batch's preview, removing a schedule (control) ----------------------------------------------
@router.post(
    "/commands/batch/preview",
    response_model=control_contract.BatchOut,
    tags=["commands"],
    summary="批量预览 · Which meters a batch would command, and which policy would block",
    description=_doc("Nothing is sent to a meter. Every meter must be in your estates (403 otherwise).", A_COMMANDS),
    openapi_extra=_extra(A_COMMANDS),
)
async def preview_batch(body: BatchIn, principal: Annotated[Principal, _needs(A_COMMANDS)], upstreams: Upstream) -> Any:
    if not principal.all_estates:
        mine = await estate_meters(upstreams, principal.estates)
        outside = sorted(set(body.meters) - mine)
        if outside:
            raise Forbidden(f"meter {outside[0]} is outside your estates / 超出您管理的小区")
    return await upstreams.call("control", "POST", "/v1/batches/preview", json=body.model_dump(mode="json"))


A_CLOSE = Action.COMMANDS_CLOSE


# -- the device registry: export and removal (collector) --------------------------------------------------
A_DEVICES = Action.DEVICES_READ
A_DEVICES_WRITE = Action.DEVICES_WRITE


@router.get(
    "/commissioning",
    tags=["meters"],
    summary="导出设备档案 · The device registry as CSV (the commissioning format)",
    description=_doc("Every gateway, bus and meter: this needs an all-estates principal.", A_DEVICES),
    responses={200: {"content": {"text/csv": {}}}},
    response_class=Response,
    openapi_extra=_extra(A_DEVICES),
)
async def export_registry(principal: Annotated[Principal, _needs(A_DEVICES)], upstreams: Upstream) -> Response:
    _all_estates(principal)
    raw = await upstreams.raw("collector", "GET", "/v1/registry/export")
    headers = {k: v for k, v in raw.headers.items() if k.lower() == "content-disposition"}
    return Response(raw.content, media_type="text/csv; charset=utf-8", headers=headers)


# -- holiday calendars (control) ---------------------------------------------------------------------------
class CalendarYearIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "holidays": ["2027-01-01", "2027-02-06", "2027-02-07"],
                    "adjusted_workdays": ["2027-02-14"],
                    "notice": "国务院办公厅关于2027年部分节假日安排的通知",
                }
            ]
        },
    )

    holidays: list[Day] = Field(max_length=366, description="statutory rest days, in-lieu days included")
    adjusted_workdays: list[Day] = Field(default_factory=list, max_length=366, description="调休 workdays")
    notice: Text = Field(min_length=1, max_length=500, description="the State Council notice the dates come from")


Year = Annotated[int, Path(ge=2000, le=2200, description="calendar year")]


# -- alarm rules and subscriptions (alarm) -----------------------------------------------------------------
class RuleIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "scope_level": "estate",
                    "scope_key": "E1",
                    "slot": "over_voltage",
                    "rule": {"kind": "threshold", "measure": "over_voltage", "limit": "245.5", "raise_after": 60},
                }
            ]
        },
    )

    scope_level: Literal["default", "estate", "building", "model", "meter"]
    scope_key: Name | None = Field(default=None, description="none for the default scope")
    slot: Identifier = Field(description="alarm type or rule slot, e.g. over_voltage")
    enabled: StrictBool = True
    rule: dict[str, Any] = Field(description='the rule, with its "kind", e.g. {"kind": "threshold", ...}')


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "audience": "staff",
                    "role": "maintenance",
                    "estate": "E1",
                    "channel": "email",
                    "address": "ops@example.com",
                }
            ]
        },
    )

    audience: Literal["staff"] = Field(description="staff subscriptions; tenants set theirs in /v1/me")
    role: Identifier = Field(description="staff role, e.g. estate_manager, maintenance")
    estate: Name | None = Field(default=None, description="only this estate (none: every estate)")
    channel: Literal["webhook", "email", "sms"]
    address: Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] = Field(
        description="URL, e-mail or phone"
    )
    secret: Annotated[str, Field(min_length=16, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = Field(
        default=None, description="webhook signing secret"
    )
    language: Literal["zh-CN", "en"] = "zh-CN"
    min_severity: Literal["info", "warning", "major", "critical"] = "warning"
    alarm_types: list[Identifier] | None = Field(default=None, max_length=50)
    quiet_start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None = None
    quiet_end: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None = None


A_ALARMS = Action.ALARMS_READ
A_CONFIGURE = Action.ALARMS_CONFIGURE


@router.get(
    "/alarm-rules",
    response_model=Paged[RuleOut],
    tags=["alarms"],
    summary="告警规则 · Every configured alarm rule",
    description=_doc("Built-in defaults and every scope's settings.", A_ALARMS),
    openapi_extra=_extra(A_ALARMS),
)
async def rules(
    principal: Annotated[Principal, _needs(A_ALARMS)], upstreams: Upstream, limit: Limit = 50, cursor: Cursor = None
) -> Any:
    rows = _rows(await upstreams.call("alarm", "GET", "/v1/rules"))
    if not principal.all_estates:  # the defaults, models and their own estates' rules
        rows = [
            r for r in rows if r.get("scope_level") != "estate" or principal.may_see_estate(str(r.get("scope_key")))
        ]
    return page_of_all(rows, limit, cursor, None)


@router.get(
    "/alarm-rules/effective",
    response_model=Paged[RuleOut],
    tags=["alarms"],
    summary="生效规则 · The alarm rules that apply to a meter",
    description=_doc("", A_ALARMS),
    openapi_extra=_extra(A_ALARMS),
)
async def effective_rules(
    principal: Annotated[Principal, _needs(A_ALARMS)],
    upstreams: Upstream,
    meter_id: Annotated[str, Query(min_length=1, max_length=64, pattern=IDENT)],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    await _inside(principal, upstreams, "meter", meter_id)
    rows = _rows(await upstreams.call("alarm", "GET", "/v1/rules/effective", params={"meter_id": meter_id}))
    return page_of_all(rows, limit, cursor, None)


@router.put(
    "/alarm-rules",
    response_model=RuleOut,
    tags=["alarms"],
    summary="设告警规则 · Set an alarm rule at a scope (validated)",
    description=_doc("Rules at every scope but an estate's reach across estates: those need all estates.", A_CONFIGURE),
    openapi_extra=_extra(A_CONFIGURE),
)
async def put_rule(body: RuleIn, principal: Annotated[Principal, _needs(A_CONFIGURE)], upstreams: Upstream) -> Any:
    await _rule_scope(principal, upstreams, body.scope_level, body.scope_key)
    return await upstreams.call("alarm", "PUT", "/v1/rules", json=body.model_dump(mode="json", exclude_none=True))


@router.delete(
    "/alarm-rules",
    status_code=204,
    tags=["alarms"],
    summary="删除告警规则 · Remove an alarm rule from a scope",
    description=_doc("", A_CONFIGURE),
    openapi_extra=_extra(A_CONFIGURE),
)
async def delete_rule(
    principal: Annotated[Principal, _needs(A_CONFIGURE)],
    upstreams: Upstream,
    scope_level: Literal["default", "estate", "building", "model", "meter"],
    slot: Annotated[str, Query(min_length=1, max_length=64, pattern=IDENT)],
    scope_key: Annotated[str | None, Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
) -> Response:
    await _rule_scope(principal, upstreams, scope_level, scope_key)
    params = {"scope_level": scope_level, "slot": slot} | ({"scope_key": scope_key} if scope_key else {})
    await upstreams.call("alarm", "DELETE", "/v1/rules", params=params)
    return _no_content()


async def _rule_scope(principal: Principal, upstreams: Upstreams, level: str, key: str | None) -> None:
    if principal.all_estates:
        return
    if level == "estate" and key is not None and principal.may_see_estate(key):
        return
    raise Forbidden("this rule reaches beyond your estates / 规则范围超出您管理的小区")


# -- work orders opened by hand (alarm) -----------------------------------------------------------------------

_NAME = r"^[^\x00-\x1f\x7f]+$"


class WorkOrderIn(BaseModel):
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

    device_id: str = Field(min_length=1, max_length=100, pattern=IDENT, description="the meter or gateway to look at")
    fault_type: str = Field(
        min_length=1, max_length=100, pattern=IDENT, description="e.g. inspection, tenant_report, a fault's type"
    )
    estate: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NAME)
    building: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NAME)
    description: str = Field(min_length=1, max_length=2000, pattern=r"^[^\x00]*$")
    assignee: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NAME)


@router.post(
    "/work-orders",
    status_code=201,
    response_model=alarm_contract.WorkOrderOut,
    tags=["maintenance"],
    summary="人工开单 · Open a work order by hand (an inspection, a tenant's call)",
    description=_doc(
        "Work orders are otherwise opened by device-fault alarms. One without an estate needs an all-estates role.",
        Action.ALARMS_WRITE,
    ),
    openapi_extra=_extra(Action.ALARMS_WRITE),
)
async def open_work_order(
    body: WorkOrderIn, principal: Annotated[Principal, _needs(Action.ALARMS_WRITE)], upstreams: Upstream
) -> Any:
    if body.estate is None:
        _all_estates(principal)
    elif not principal.may_see_estate(body.estate):
        raise Forbidden("estate is outside your estates / 超出您管理的小区")
    return await upstreams.call(
        "alarm", "POST", "/v1/work-orders", json=body.model_dump(mode="json", exclude_none=True)
    )


@router.post(
    "/alarm-subscriptions",
    status_code=201,
    response_model=SubscriptionOut,
    tags=["alarms"],
    summary="订阅告警 · Send a staff role's alarms to an e-mail, phone or webhook",
    description=_doc(
        "Webhook URLs are checked by the alarm service (no private or loopback addresses unless allowed).",
        A_CONFIGURE,
    ),
    openapi_extra=_extra(A_CONFIGURE),
)
async def subscribe(
    body: SubscriptionIn, principal: Annotated[Principal, _needs(A_CONFIGURE)], upstreams: Upstream
) -> Any:
    if body.estate is None:
        _all_estates(principal)
    elif not principal.may_see_estate(body.estate):
        raise Forbidden("estate is outside your estates / 超出您管理的小区")
    return await upstreams.call(
        "alarm", "POST", "/v1/subscriptions", json=body.model_dump(mode="json", exclude_none=True)
    )


@router.get(
    "/alarm-subscriptions",
    response_model=Paged[SubscriptionOut],
    tags=["alarms"],
    summary="告警订阅 · Staff alarm subscriptions",
    description=_doc("Estate-scoped callers see their estates' subscriptions.", A_ALARMS),
    openapi_extra=_extra(A_ALARMS),
)
async def subscriptions(
    principal: Annotated[Principal, _needs(A_ALARMS)],
    upstreams: Upstream,
    estate: Annotated[str | None, Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    if estate is not None and not principal.may_see_estate(estate):
        raise Forbidden("estate is outside your estates / 超出您管理的小区")
    rows = await _staff_subscriptions(principal, upstreams, estate)
    return page_of_all(rows, limit, cursor, None)


async def _staff_subscriptions(principal: Principal, upstreams: Upstreams, estate: str | None) -> list[Any]:
    rows = _rows(
        await upstreams.call("alarm", "GET", "/v1/subscriptions", params={"estate": estate} if estate else None)
    )
    rows = [r for r in rows if r.get("audience") == "staff"]
    if principal.all_estates:
        return rows
    return [r for r in rows if r.get("estate") is not None and principal.may_see_estate(str(r["estate"]))]


@router.delete(
    "/alarm-subscriptions/{subscription_id}",
    status_code=204,
    tags=["alarms"],
    summary="取消订阅 · Remove a staff alarm subscription",
    description=_doc("", A_CONFIGURE),
    openapi_extra=_extra(A_CONFIGURE),
)
async def unsubscribe(
    subscription_id: uuid.UUID,
    principal: Annotated[Principal, _needs(A_CONFIGURE)],
    upstreams: Upstream,
) -> Response:
    visible = {str(r.get("subscription_id")) for r in await _staff_subscriptions(principal, upstreams, None)}
    if str(subscription_id) not in visible:
        raise ObjectNotFound("no such subscription")  # tenants' own subscriptions are theirs to change
    await upstreams.call("alarm", "DELETE", f"/v1/subscriptions/{subscription_id}")
    return _no_content()


@router.get(
    "/notifications",
    response_model=Paged[NotificationOut],
    tags=["alarms"],
    summary="通知投递记录 · Every alarm notification with its delivery attempts",
    description=_doc(
        "`status`: pending, delivered or dead. Addresses of every estate's staff and tenants: this needs an "
        "all-estates principal.",
        A_ALARMS,
    ),
    openapi_extra=_extra(A_ALARMS),
)
async def notifications(
    principal: Annotated[Principal, _needs(A_ALARMS)],
    upstreams: Upstream,
    status: Literal["pending", "delivered", "dead"] | None = None,
    alarm_id: uuid.UUID | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    _all_estates(principal)
    params: dict[str, Any] = {"limit": UPSTREAM_CAP} | {
        k: str(v) for k, v in (("status", status), ("alarm_id", alarm_id)) if v is not None
    }
    rows = _rows(await upstreams.call("alarm", "GET", "/v1/notifications", params=params))
    return page_of_all(rows, limit, cursor, None)


# -- the gateway's audit log -------------------------------------------------------------------------------
class AuditEntry(BaseModel):
    id: int
    at: datetime
    principal: str
    role: str | None
    method: str
    path: str
    status: int
    client_address: str | None
    idempotency_key: str | None
    user_agent: str | None


A_AUDIT = Action.AUDIT_READ


@router.get(
    "/audit-log",
    response_model=Paged[AuditEntry],
    tags=["audit"],
    summary="操作审计 · Every write through the gateway: who, what, when, from where, and how it ended",
    description=_doc(
        "Newest first. `principal` as recorded (`user:<id>`, `api_key:<prefix>`), `path` a prefix, "
        "`since`/`until` aware instants ([since, until)).",
        A_AUDIT,
    ),
    openapi_extra=_extra(A_AUDIT),
)
async def audit_log(
    request: Request,
    principal: Annotated[Principal, _needs(A_AUDIT)],
    who: Annotated[
        str | None, Query(alias="principal", min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    ] = None,
    method: Literal["POST", "PUT", "PATCH", "DELETE"] | None = None,
    path: Annotated[str | None, Query(min_length=1, max_length=300, pattern=r"^/[^\x00-\x1f\x7f%_]*$")] = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    _all_estates(principal)
    offset = decode_cursor(cursor)
    clauses: list[str] = ["true"]
    params: dict[str, Any] = {"limit": limit + 1, "offset": offset}
    for clause, name, value in (
        ("principal = :principal", "principal", who),
        ("method = :method", "method", method),
        ("starts_with(path, :path)", "path", path),
        ("at >= :since", "since", since),
        ("at < :until", "until", until),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    sql = (
        "SELECT id, at, principal, role, method, path, status, client_address, idempotency_key, user_agent "
        f"FROM gateway.audit_log WHERE {' AND '.join(clauses)} ORDER BY at DESC, id DESC LIMIT :limit OFFSET :offset"
    )
    async with container_of(request).runtime.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(text(sql), params)]
    return {
        "items": rows[:limit],
        "next_cursor": encode_cursor(offset + limit) if len(rows) > limit else None,
    }


# -- the plain pass-throughs: one table, one mechanism --------------------------------------------------------
@dataclass(frozen=True)
class Inside:
    """The caller reaches the object only inside their estates (404 outside them): its kind, and the path parameter
    (or body field) naming it."""

    kind: str
    name: str


ALL_ESTATES: Final = "all_estates"  # spans estates: an all-estates principal (403 otherwise)
ESTATE_OR_ALL: Final = "estate_or_all"  # `estate_id` one of the caller's estates, or `all` for an all-estates principal
Guard = Inside | Literal["all_estates", "estate_or_all"] | None


@dataclass(frozen=True)
class Forward:
    """A route that checks who may call it, forwards to one backend route and answers what the backend answered:
    a typed answer (`response`), a page of its rows (`rows`), or nothing (204). `name` is the endpoint's name, so
    its OpenAPI operationId."""

    name: str
    method: str
    path: str
    action: Action
    service: str
    tag: str
    summary: str
    description: str = ""
    guard: Guard = None
    body: Any = None  # the typed body, forwarded as JSON
    exclude_none: bool = False  # leave unset optional fields out of the forwarded body (the backend defaults them)
    reason: bool = False  # a `reason` query parameter, forwarded (the DELETEs that record why)
    idempotent: bool = False  # under an Idempotency-Key: a replay returns the first answer
    response: Any = None
    rows: type[BaseModel] | None = None
    status: int = 200


# Path parameters typed beyond an identifier, by name.
PATH_TYPES: dict[str, Any] = {
    "month": MonthPath,
    "review_id": ReviewId,
    "year": Year,
    "provider": Literal["wechat", "alipay", "sandbox"],
    "bill_date": Annotated[Day, Path(description="the local day of the bill, e.g. 2027-01-01")],
    "payment_id": uuid.UUID,
    "schedule_id": uuid.UUID,
    "notification_id": uuid.UUID,
}
FORWARDS: tuple[Forward, ...] = (
    # metering (billing)
    Forward(
        "meter_event",
        "POST",
        "/meters/{meter_id}/events",
        Action.CORRECTIONS_CREATE,
        "billing",
        "metering",
        "表计事件 · Declare a meter replacement, CT-ratio change or rollover (idempotent)",
        "Billing prices the meter's consumption across the change. Who declared it is the signed-in caller.",
        guard=Inside("meter", "meter_id"),
        body=MeterEventIn,
        exclude_none=True,
        idempotent=True,
        response=billing_contract.MeterEventOut,
        status=201,
    ),
    Forward(
        "common_meter",
        "PUT",
        "/estates/{estate_id}/common-meters/{meter_id}",
        Action.PREMISES_WRITE,
        "billing",
        "metering",
        "公摊表 · Bind a common meter whose consumption the estate's households share",
        "Effective-dated; the monthly run shares its cost out (公摊).",
        guard=Inside("estate", "estate_id"),
        body=CommonMeterIn,
        exclude_none=True,
    ),
    Forward(
        "run_month",
        "POST",
        "/estates/{estate_id}/months/{month}/run",
        Action.BILLING_RUN,
        "billing",
        "metering",
        "月结 · Post a past month's fixed fees and 公摊 for an estate (once)",
        "Runs once per estate and month; a repeat returns the first run. A month that has not ended is a 409.",
        guard=Inside("estate", "estate_id"),
        response=billing_contract.MonthRunOut,
    ),
    Forward(
        "estate_meter_list",
        "GET",
        "/estates/{estate_id}/meters",
        A_PREMISES,
        "billing",
        "metering",
        "小区表计 · Meters bound now to an estate's rooms, accounts or common use",
        guard=Inside("estate", "estate_id"),
        response=billing_contract.EstateMetersOut,
    ),
    Forward(
        "tenant_leases",
        "GET",
        "/tenants/{tenant_id}/leases",
        A_PREMISES,
        "billing",
        "premises",
        "租户租约 · Every lease of a tenant, ended ones too",
        "A tenant may lease in several estates: this needs an all-estates principal.",
        guard=ALL_ESTATES,
        response=billing_contract.TenantLeasesOut,
    ),
    Forward(
        "meter_reading",
        "GET",
        "/meters/{meter_id}/reading",
        A_ACCOUNTS,
        "billing",
        "metering",
        "最新读数 · The last register values billed for a meter (404 before the first)",
        guard=Inside("meter", "meter_id"),
        response=billing_contract.LatestReadingOut,
    ),
    # payments (billing)
    Forward(
        "put_alias",
        "PUT",
        "/payments/aliases/{alias}",
        A_RECONCILE,
        "billing",
        "payments",
        "缴费别名 · Register a payment reference or room code for bank matching",
        guard=Inside("account", "account_id"),
        body=AliasIn,
    ),
    Forward(
        "assign_review",
        "POST",
        "/payments/reviews/{review_id}/assign",
        A_RECONCILE,
        "billing",
        "payments",
        "认领款项 · Credit a review item to an account (idempotent)",
        "Assigning the same item to the same account again returns it; to another is a 409.",
        guard=ALL_ESTATES,  # an unmatched bank line belongs to no estate yet
        body=AssignIn,
        idempotent=True,
        response=billing_contract.ReviewOut,
    ),
    Forward(
        "dismiss_review",
        "POST",
        "/payments/reviews/{review_id}/dismiss",
        A_RECONCILE,
        "billing",
        "payments",
        "关闭待匹配款项 · Close a review item without crediting",
        guard=ALL_ESTATES,
        body=DismissIn,
        response=billing_contract.ReviewOut,
    ),
    Forward(
        "reconcile_payments",
        "POST",
        "/payments/reconciliations/{provider}/{bill_date}",
        A_RECONCILE,
        "billing",
        "payments",
        "重新对账 · Reconcile one provider's bill of one local day now (idempotent)",
        "Downloads the provider's bill again and matches it line by line.",
        guard=ALL_ESTATES,
        response=ReconciliationOut,
    ),
    Forward(
        "payment_refunds",
        "GET",
        "/payments/{payment_id}/refunds",
        A_ACCOUNTS,
        "billing",
        "payments",
        "退款记录 · Refunds of a payment",
        guard=ALL_ESTATES,
        rows=RefundOut,
    ),
    # cut-off protection (control)
    Forward(
        "set_hold",
        "PUT",
        "/holds/{estate_id}",
        A_TRIP,
        "control",
        "commands",
        "设停断开关 · No cut-off in an estate (`all`: everywhere) until lifted or `until`",
        "Trips due meanwhile wait as deferrals and are decided again when the switch ends.",
        guard=ESTATE_OR_ALL,
        body=HoldIn,
    ),
    Forward(
        "lift_hold",
        "DELETE",
        "/holds/{estate_id}",
        A_TRIP,
        "control",
        "commands",
        "解除停断开关 · Lift a no-cut-off switch; deferred trips are decided again",
        guard=ESTATE_OR_ALL,
        reason=True,
    ),
    Forward(
        "lift_household_keep_power",
        "DELETE",
        "/keep-power/households/{account_id}",
        A_TRIP,
        "control",
        "commands",
        "解除保电 · Lift a household's keep-power",
        "The household may be cut off again by its balance.",
        guard=Inside("account", "account_id"),
        reason=True,
    ),
    Forward(
        "set_estate_keep_power",
        "PUT",
        "/keep-power/estates/{estate_id}",
        A_TRIP,
        "control",
        "commands",
        "小区保电 · Keep a whole estate's supply on",
        guard=Inside("estate", "estate_id"),
        body=KeepPowerIn,
    ),
    Forward(
        "lift_estate_keep_power",
        "DELETE",
        "/keep-power/estates/{estate_id}",
        A_TRIP,
        "control",
        "commands",
        "解除小区保电 · Lift an estate's keep-power",
        guard=Inside("estate", "estate_id"),
        reason=True,
    ),
    Forward(
        "delete_schedule",
        "DELETE",
        "/schedules/{schedule_id}",
        A_CLOSE,
        "control",
        "commands",
        "删除定时命令 · Remove a scheduled command",
        "Schedules span estates (as their listing does): this needs an all-estates principal.",
        guard=ALL_ESTATES,
    ),
    # the device registry (collector)
    Forward(
        "delete_meter",
        "DELETE",
        "/meters/{meter_id}",
        A_DEVICES_WRITE,
        "collector",
        "meters",
        "删除表计档案 · Remove a meter from the registry (polling stops)",
        "Its binding and history in billing stay; an unbound meter needs an all-estates principal.",
        guard=Inside("meter", "meter_id"),
    ),
    Forward(
        "delete_bus",
        "DELETE",
        "/buses/{bus_id}",
        A_DEVICES_WRITE,
        "collector",
        "meters",
        "删除总线 · Remove an RS-485 bus with its meters",
        "A bus may serve meters of several estates: this needs an all-estates principal.",
        guard=ALL_ESTATES,
    ),
    Forward(
        "delete_gateway",
        "DELETE",
        "/gateways/{gateway_id}",
        A_DEVICES_WRITE,
        "collector",
        "meters",
        "删除网关 · Remove a gateway with its buses and meters",
        "A gateway may serve several estates: this needs an all-estates principal.",
        guard=ALL_ESTATES,
    ),
    # holiday calendars (control)
    Forward(
        "calendar",
        "GET",
        "/calendar",
        A_COMMANDS,
        "control",
        "commands",
        "节假日日历 · Which years the holiday calendar covers, and a warning when next year is missing",
        response=control_contract.CalendarCoverageOut,
    ),
    Forward(
        "calendar_year",
        "GET",
        "/calendar/{year}",
        A_COMMANDS,
        "control",
        "commands",
        "年度节假日安排 · A year's published holiday arrangement",
        response=control_contract.CalendarYearOut,
    ),
    Forward(
        "publish_calendar_year",
        "PUT",
        "/calendar/{year}",
        A_TRIP,
        "control",
        "commands",
        "发布节假日安排 · Publish a year's holiday arrangement (State Council notice)",
        "It wins over the built-in library for that year, in every estate.",
        guard=ALL_ESTATES,
        body=CalendarYearIn,
        response=control_contract.CalendarYearOut,
    ),
    # notifications (alarm)
    Forward(
        "retry_notification",
        "POST",
        "/notifications/{notification_id}/retry",
        A_CONFIGURE,
        "alarm",
        "alarms",
        "重发通知 · Deliver a dead notification again",
        guard=ALL_ESTATES,
        response=dict[str, str],
        status=202,
    ),
)


async def _guard(forward: Forward, principal: Principal, upstreams: Upstreams, path: dict[str, str], body: Any) -> None:
    if forward.guard == ALL_ESTATES:
        _all_estates(principal)
    elif forward.guard == ESTATE_OR_ALL:
        await _estate_or_all(principal, upstreams, path["estate_id"])
    elif isinstance(forward.guard, Inside):
        named = path.get(forward.guard.name) or (body or {}).get(forward.guard.name)
        await _inside(principal, upstreams, forward.guard.kind, str(named))


def _forward_params(forward: Forward) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(name, kw, annotation=PATH_TYPES.get(name, Id))
        for name in re.findall(r"\{(\w+)\}", forward.path)
    ]
    if forward.body is not None:
        params.append(inspect.Parameter("body", kw, annotation=forward.body))
    params += [
        inspect.Parameter("request", kw, annotation=Request),
        inspect.Parameter("principal", kw, annotation=Annotated[Principal, _needs(forward.action)]),
        inspect.Parameter("upstreams", kw, annotation=Upstream),
    ]
    if forward.idempotent:
        params.append(inspect.Parameter("store", kw, annotation=Idempotency))
        params.append(inspect.Parameter("idempotency_key", kw, annotation=IdempotencyKey))
    if forward.reason:
        params.append(inspect.Parameter("reason", kw, annotation=Reason))
    if forward.rows is not None:
        params.append(inspect.Parameter("limit", kw, default=50, annotation=Limit))
        params.append(inspect.Parameter("cursor", kw, default=None, annotation=Cursor))
    return params


def _forward_endpoint(forward: Forward) -> Any:
    names = re.findall(r"\{(\w+)\}", forward.path)

    async def endpoint(**kwargs: Any) -> Any:
        principal: Principal = kwargs["principal"]
        upstreams: Upstreams = kwargs["upstreams"]
        path = {name: str(kwargs[name]) for name in names}  # a date's str() is its ISO form
        model = kwargs.get("body")
        body = None if model is None else model.model_dump(mode="json", exclude_none=forward.exclude_none)
        await _guard(forward, principal, upstreams, path, body)
        target = "/v1" + forward.path.format(**path)
        params = {"reason": kwargs["reason"]} if forward.reason else None
        if forward.idempotent:
            return await _once(
                kwargs["request"],
                principal,
                kwargs["store"],
                kwargs["idempotency_key"],
                body,
                lambda headers: upstreams.raw(forward.service, forward.method, target, json=body, headers=headers),
                forward.status,
            )
        found = await upstreams.call(forward.service, forward.method, target, json=body, params=params)
        if forward.rows is not None:
            return page_of_all(_rows(found), kwargs["limit"], kwargs["cursor"], None)
        if forward.response is None:
            return _no_content()
        return JSONResponse(found, status_code=forward.status)  # the backend's answer as it wrote it

    endpoint.__signature__ = inspect.Signature(_forward_params(forward))  # type: ignore[attr-defined]
    endpoint.__name__ = forward.name
    return endpoint


def _add_forwards() -> None:
    for forward in FORWARDS:
        answers = forward.response is not None or forward.rows is not None
        router.add_api_route(
            forward.path,
            _forward_endpoint(forward),
            methods=[forward.method],
            status_code=forward.status if answers else 204,
            response_model=forward.response if forward.rows is None else Paged.__class_getitem__(forward.rows),
            tags=[forward.tag],
            summary=forward.summary,
            description=_doc(forward.description, forward.action),
            openapi_extra=_extra(forward.action),
        )


_add_forwards()
