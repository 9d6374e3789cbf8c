"""Staff and integrator API: the backends' resources behind role checks, estate scoping and the
API conventions, declared as one table of routes (`ROUTES`) served by one mechanism (`_endpoint`).

Each route names the action it needs (see policy.py), the backend and path it proxies to, and
how to find the estate of what it touches, so estate managers stay inside their estates:
an object outside them is a 404, a listing outside them a 403.
"""

from __future__ import annotations

import inspect
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, time
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.api.auth import require
from shuidian_gateway.api.conventions import (
    ERRORS,
    ISO_DAY_OR_INSTANT,
    MONTH_PATTERN,
    NO_NUL,
    Amount,
    Area,
    Cursor,
    IdempotencyKey,
    IfMatch,
    Limit,
    MoneyIn,
    MonthQuery,
    Page,
    Price,
    Quantity,
    Sort,
    Text,
    check_etag,
    decode_cursor,
    encode_cursor,
    etag_of,
    page_of_all,
    upstream_key,
    written_as,
)
from shuidian_gateway.api.deps import Idempotency, UpstreamsDep, container_of
from shuidian_gateway.domain.policy import Action, Principal, Role
from shuidian_gateway.errors import Forbidden, InvalidRequest, ObjectNotFound, PreconditionFailed
from shuidian_shared.contracts import alarm as alarm_contract
from shuidian_shared.contracts import billing as billing_contract
from shuidian_shared.contracts import collector as collector_contract
from shuidian_shared.contracts import control as control_contract
from shuidian_shared.messages import AwareDatetime, CommandKind, Identifier, Utility

IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
WORD = r"^[^\x00-\x1f\x7f]*$"  # a free-text filter: no control characters (alarm refuses them in its filters)
Kind = Literal["object", "list", "write", "money", "csv"]
# Commands that cut supply (or lift its protection) need commands:trip; the rest commands:close.
CUT_OFF_KINDS = frozenset({"trip", "valve_close", "keep_power_off"})
UPSTREAM_PAGE_CAP = 1000
CSV_HEADER = r"^\ufeff?[a-z0-9_]+(,[a-z0-9_]+)+\r?\n"  # billing's estate import has `area_m2`


def _written(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("dates and times are JSON strings (ISO 8601) / 日期时间须为字符串")
    return value


# Bodies validate strictly (no "1" for 1, no 0 for false); dates and times are the one exception, as they
# arrive as ISO 8601 strings, which strict validation would refuse — and nothing else is taken for one.
Day = Annotated[date, Field(strict=False), BeforeValidator(_written)]
Moment = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_written)]
WallClock = Annotated[time, Field(strict=False), BeforeValidator(_written)]


def _whole(value: Any) -> Any:
    """A JSON integer: 7 or 7.0 (JSON Schema's integer), never "7" or true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("a JSON integer / 须为整数")
    return value


Whole = Annotated[int, BeforeValidator(_whole)]
# Enumerations arrive as their string values (strict validation would want the Python enum itself).
UtilityName = Annotated[Utility, Field(strict=False)]
CommandKindName = Annotated[CommandKind, Field(strict=False)]


class TopUpIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"amount": "50.00", "channel": "cash", "reference": "R-0001"}]},
    )

    amount: Amount
    channel: Literal["cash", "bank", "wechat", "alipay", "sandbox"] = "cash"
    reference: Text | None = Field(default=None, max_length=100, description="receipt or provider transaction id")
    utility: UtilityName | None = Field(default=None, description="which balance, when the estate keeps them separate")


# -- request bodies of the staff write routes: what each backend accepts, no more -------------------------------
# Who acts is never a body field: backends record the subject of the gateway's service token, which names
# the signed-in staff member (older `operator`, `cashier`, `closed_by` and `by` fields are gone).
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=NO_NUL)]
# A local wall-clock time as the backends take it: HH:MM or HH:MM:SS, never an offset (JSON Schema's `time`
# format would carry one, which control refuses).
LocalTime = Annotated[
    str,
    Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
        description="local wall-clock time HH:MM[:SS], without offset",
        examples=["22:00:00"],
    ),
]


def _body(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": list(examples)})


class EstateIn(BaseModel):
    model_config = _body({"name": "幸福里公租房", "shared_balance": True, "shared_basis": "area"})

    name: Name
    shared_balance: bool = Field(default=True, description="水电一卡通: water and electricity share one balance")
    shared_basis: Literal["area", "equal"] = Field(default="area", description="how 公摊 is shared")


class BuildingIn(BaseModel):
    model_config = _body({"estate_id": "E1", "name": "1号楼"})

    estate_id: Identifier
    name: Name


class FloorIn(BaseModel):
    model_config = _body({"building_id": "B1", "level": 1})

    building_id: Identifier
    level: Whole = Field(ge=-5, le=200, description="storey; negative below ground")


class RoomIn(BaseModel):
    model_config = _body({"floor_id": "B1-F1", "code": "1-0101", "area_m2": "45.50", "household_size": 3})

    floor_id: Identifier
    code: Identifier = Field(description="the room code tenants write on a bank transfer, e.g. 1-0302")
    area_m2: Area
    household_size: Whole = Field(default=1, ge=1, le=30)


class RoomMeterIn(BaseModel):
    model_config = _body({"utility": "electricity", "effective_from": "2026-11-01T00:00:00+08:00"})

    utility: UtilityName
    effective_from: Moment | None = Field(default=None, description="default: now")


class TenantIn(BaseModel):
    model_config = _body({"name": "张三", "phone": "13800000000"})

    name: Name
    phone: str = Field(default="", max_length=30, pattern=r"^[0-9+() -]*$")


class LeaseIn(BaseModel):
    model_config = _body({"tenant_id": "T-0001", "room_id": "R-1-101", "move_in": "2026-11-01"})

    tenant_id: Identifier
    room_id: Identifier
    move_in: Day
    account_id: Identifier | None = Field(default=None, description="default: a new account named after the lease")


class MoveOutIn(BaseModel):
    model_config = _body({"move_out": "2026-12-31"})

    move_out: Day = Field(description="the first local day the household no longer leases the room")


class ClosingReadingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    meter_id: Identifier
    value: Quantity = Field(description="the register read on site at move-out")


class SettlementIn(BaseModel):
    model_config = _body(
        {"move_out": "2026-12-31"},
        {"reason": "退租结算 · move-out settlement", "closing_readings": [{"meter_id": "W-0302", "value": "412.37"}]},
    )

    reason: Reason = "退租结算 · move-out settlement"
    move_out: Day | None = Field(default=None, description="ends the lease on this local date first, if still open")
    closing_readings: list[ClosingReadingIn] = Field(
        default_factory=list, max_length=20, description="closing values of meters without a final reading"
    )


class AccountIn(BaseModel):
    model_config = _body({"name": "1-101", "low_1": "20.00", "low_2": "5.00"})

    name: Name
    low_1: MoneyIn = Field(default=Decimal("20.00"), description="first low-balance warning level")
    low_2: MoneyIn = Field(default=Decimal("5.00"), description="second low-balance warning level")
    grace_credit: MoneyIn = Field(default=Decimal("0.00"), description="overdraft allowed before supply is cut")
    estate_id: Identifier | None = Field(default=None, description="the estate decides whether balances are shared")


class SubsidyIn(BaseModel):
    model_config = _body({"amount": "30.00", "program": "低保补贴"})

    amount: Amount
    program: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)] = Field(description="补贴项目")
    utility: UtilityName | None = None


class ReasonIn(BaseModel):
    model_config = _body({"reason": "wrong meter reading / 抄表错误"})

    reason: Reason


class RefundIn(BaseModel):
    model_config = _body({"amount": "10.00", "reason": "重复缴费 / paid twice"})

    amount: Amount
    reason: Reason


class ShiftIn(BaseModel):
    model_config = _body({"counter_id": "C1", "opening_float": "200.00"})

    counter_id: Identifier
    opening_float: MoneyIn = Decimal("0.00")


class CashPaymentIn(BaseModel):
    model_config = _body({"account_id": "A101", "amount": "50.00"})

    account_id: Identifier
    amount: Amount


class CloseShiftIn(BaseModel):
    model_config = _body({"counted_cash": "1250.00"})

    counted_cash: MoneyIn


class TariffIn(BaseModel):
    model_config = _body({"unit_price": "0.5883", "effective_from": "2026-12-01T00:00:00+08:00"})

    unit_price: Price
    effective_from: Moment


class FlatIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["flat"]
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=NO_NUL)] = "flat"
    unit_price: Price


class TouRateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: Annotated[str, Field(min_length=1, max_length=20, pattern=NO_NUL)]
    unit_price: Price
    register_name: str | None = Field(default=None, max_length=64, pattern=NO_NUL)


class TouSegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    start: LocalTime
    rate: Annotated[str, Field(min_length=1, max_length=20, pattern=NO_NUL, description="a rate's label")]


class TouIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["tou"]
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=NO_NUL)] = "tou"
    rates: list[TouRateIn] = Field(min_length=1, max_length=14)
    segments: list[TouSegmentIn] = Field(min_length=1, max_length=14)


class TierBlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: Annotated[str, Field(min_length=1, max_length=20, pattern=NO_NUL)]
    width: Quantity | None = Field(description="kWh or m³ in the block; null: the last, open-ended block")
    unit_price: Price
    extra_width_per_person: Quantity = Decimal(0)


class TieredIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["tiered"]
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=NO_NUL)] = "tiered"
    period: Literal["month", "year"] = "month"
    base_household_size: Annotated[int, Field(ge=1, le=30), BeforeValidator(_whole)] | None = None
    blocks: list[TierBlockIn] = Field(min_length=1, max_length=10)


class FixedIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["fixed"]
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=NO_NUL)] = "service_fee"
    amount_per_month: MoneyIn


class TariffVersionIn(BaseModel):
    model_config = _body(
        {
            "effective_from": "2027-01-01T00:00:00+08:00",
            "components": [
                {"kind": "flat", "unit_price": "0.5883"},
                {"kind": "fixed", "name": "service_fee", "amount_per_month": "5.00"},
            ],
        }
    )

    effective_from: Moment
    components: list[Annotated[FlatIn | TouIn | TieredIn | FixedIn, Field(discriminator="kind")]] = Field(
        min_length=1, max_length=10
    )


class BindingIn(BaseModel):
    model_config = _body({"account_id": "A101", "utility": "electricity"})

    account_id: Identifier
    utility: UtilityName
    effective_from: Moment | None = Field(
        default=None, description="when the meter starts billing this account (default: now, or always for a new meter)"
    )


class GatewayIn(BaseModel):
    model_config = _body({"name": "1号楼网关"})

    name: str = Field(default="", max_length=200, pattern=NO_NUL)
    shard: Annotated[int, Field(ge=0, le=1023), BeforeValidator(_whole)] | None = Field(
        default=None, description="pin to a collector shard; default: by hash"
    )


class BusIn(BaseModel):
    model_config = _body({"gateway_id": "GW1", "host": "10.0.0.7", "port": 10001, "protocol": "dlt645", "baud": 2400})

    gateway_id: Identifier
    host: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")
    port: Whole = Field(ge=1, le=65535)
    protocol: Literal["dlt645", "dlt645-1997", "cjt188", "modbus-rtu", "modbus-tcp"]
    baud: Whole = Field(default=2400, ge=300, le=115200)
    timeout_ms: Whole = Field(default=1000, ge=50, le=30000)
    retries: Whole = Field(default=1, ge=0, le=5)


class MeterIn(BaseModel):
    model_config = _body({"bus_id": "GW1-1", "address": "000000000101", "model": "dds1588", "utility": "electricity"})

    bus_id: Identifier
    address: str = Field(min_length=1, max_length=14, pattern=r"^[0-9A-Fa-f]+$")
    model: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    utility: UtilityName
    poll_interval_s: Whole = Field(default=60, ge=1, le=86400)


class KeepPowerIn(BaseModel):
    model_config = _body({"reason": "medical", "note": "家中有医疗设备 / medical equipment at home"})

    reason: Literal["elderly", "medical", "other"]
    note: str = Field(default="", max_length=500, pattern=NO_NUL)


class EstatePolicyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "nights_start": "22:00:00",
                    "nights_end": "07:00:00",
                    "weekends": True,
                    "holidays": True,
                    "restore": "direct_close",
                    "prepaid_water": False,
                },
                {"nights_start": None, "nights_end": None, "weekends": True},
            ],
            # The night window is two times or two nulls (switched off): one null alone is refused.
            "anyOf": [
                {"properties": {"nights_start": {"type": "string"}, "nights_end": {"type": "string"}}},
                {
                    "properties": {"nights_start": {"type": "null"}, "nights_end": {"type": "null"}},
                    "required": ["nights_start", "nights_end"],
                },
            ],
        },
    )

    nights_start: LocalTime | None = Field(default="22:00:00", description="null with nights_end: no night window")
    nights_end: LocalTime | None = "07:00:00"
    weekends: bool = True
    holidays: bool = Field(default=True, description="statutory holidays; dates the calendar does not know count too")
    restore: Literal["direct_close", "close_allowed"] = "direct_close"
    prepaid_water: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> EstatePolicyIn:
        if (self.nights_start is None) != (self.nights_end is None):
            raise ValueError("nights_start and nights_end are both set or both null / 夜间时段须同时设置")
        if self.nights_start is not None and time.fromisoformat(self.nights_start) == time.fromisoformat(
            self.nights_end or ""
        ):
            raise ValueError("the night window needs start != end / 夜间时段起止不能相同")
        return self


AlarmVersion = Annotated[
    Annotated[int, Field(ge=1), BeforeValidator(_whole)] | None,
    Field(
        description="the alarm's `version` you read: 409 (`version_conflict`) when it changed since; omit to act on "
        "whatever the alarm now is",
    ),
]


class AcknowledgeIn(BaseModel):
    """The acknowledger is the signed-in staff member; `expected_version` guards against acting on a stale view."""

    model_config = _body({"expected_version": 3})

    expected_version: AlarmVersion = None


class AlarmResolveIn(BaseModel):
    """Why the alarm is resolved by hand; the resolver is the signed-in staff member."""

    model_config = _body({"reason": "总表接线松动，已紧固 · master meter wiring loose, fixed", "expected_version": 3})

    reason: Annotated[str, Field(min_length=1, max_length=2000, pattern=NO_NUL)]
    expected_version: AlarmVersion = None


_WORK_ORDER_CHANGES = ("status", "assignee", "note", "closing_cause")


class WorkOrderPatch(BaseModel):
    """At least one change (alarm refuses a patch that changes nothing); a null leaves its field as it is."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"status": "in_progress", "assignee": "王师傅", "note": "已到现场 / on site"}],
            "anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in _WORK_ORDER_CHANGES],
        },
    )

    status: Literal["open", "assigned", "in_progress", "resolved", "closed"] | None = None
    assignee: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    note: Annotated[str, Field(min_length=1, max_length=2000, pattern=NO_NUL)] | None = None
    closing_cause: Annotated[str, Field(min_length=1, max_length=2000, pattern=NO_NUL)] | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> WorkOrderPatch:
        if all(getattr(self, f) is None for f in _WORK_ORDER_CHANGES):
            raise ValueError("nothing to change: send a status, assignee, note or closing cause / 没有要修改的内容")
        return self


@dataclass(frozen=True)
class EstateOf:
    """Where a route finds the estate it touches: a path or query parameter naming the estate, an
    object (by path parameter or body field) whose estate a backend knows, or — for listings whose
    backend does not know estates — a field of each row (`item`): estate-scoped callers get only the
    rows in their estates."""

    source: Literal["path", "query", "body", "item"]
    name: str  # parameter, body field or row field
    kind: str = "estate"  # estate, account, room, meter, lease, building, floor, command, alarm, work_order


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    action: Action
    service: str
    summary: str
    tag: str
    kind: Kind = "object"
    upstream: str | None = None  # default: same path under /v1
    estate: EstateOf | None = None  # None: spans estates, only for principals that see all of them
    filters: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # filters the backend needs: required in the OpenAPI too
    # A listing whose backend filters, sorts (by these fields) and pages (limit/offset) itself: the
    # gateway forwards the cursor's offset and the sort instead of sorting a capped window.
    sorts: tuple[str, ...] = ()
    body: type[BaseModel] | None = None  # the typed body of a write: what the backend accepts, with examples
    # The backend's answer (a shared contract), documented as such and forwarded as the backend wrote it; a write
    # without one answers 204 with nothing.
    response: Any = None
    status: int | None = None  # the success status; default 201 for money, 204 for a write without an answer, else 200
    # Only for a write still without a typed body (test_gateway_request_contract.py flags such a route).
    example: dict[str, Any] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_E = EstateOf
_ESTATE = _E("path", "estate_id")
_ACCOUNT = _E("path", "account_id", "account")
_LEASE = _E("path", "lease_id", "lease")
_METER = _E("path", "meter_id", "meter")
_ALARM = _E("path", "alarm_id", "alarm")
_WORK_ORDER = _E("path", "work_order_id", "work_order")
ROUTES: tuple[Route, ...] = (
    # premises (billing)
    Route(
        "GET",
        "/estates",
        Action.PREMISES_READ,
        "billing",
        "小区列表 · Estates",
        "premises",
        "list",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "name"),
        sorts=("estate_id", "name", "created_at"),
        description="With building, room and occupied-room counts; `name` matches a fragment.",
    ),
    Route(
        "GET",
        "/estates/{estate_id}",
        Action.PREMISES_READ,
        "billing",
        "小区 · An estate",
        "premises",
        estate=_ESTATE,
        response=billing_contract.EstateOut,
    ),
    Route(
        "PUT",
        "/estates/{estate_id}",
        Action.PREMISES_WRITE,
        "billing",
        "建立/修改小区 · Create or update an estate",
        "premises",
        "write",
        body=EstateIn,
        estate=_ESTATE,
    ),
    Route(
        "POST",
        "/estates/{estate_id}/import",
        Action.PREMISES_WRITE,
        "billing",
        "批量导入房间、表计、租户 · Import an estate's rooms, meters and tenants from CSV",
        "premises",
        "csv",
        estate=_ESTATE,
        description="All or nothing; every refused line is reported with its number.",
        response=dict[str, int],
    ),
    Route(
        "GET",
        "/estates/{estate_id}/buildings",
        Action.PREMISES_READ,
        "billing",
        "楼栋 · Buildings of an estate",
        "premises",
        "list",
        estate=_ESTATE,
        sorts=("building_id", "name", "rooms"),
        description="With floor and room counts; 404 for an unknown estate.",
    ),
    Route(
        "GET",
        "/buildings/{building_id}",
        Action.PREMISES_READ,
        "billing",
        "楼栋 · A building",
        "premises",
        estate=_E("path", "building_id", "building"),
        response=billing_contract.BuildingRecordOut,
    ),
    Route(
        "PUT",
        "/buildings/{building_id}",
        Action.PREMISES_WRITE,
        "billing",
        "建立/修改楼栋 · Create or update a building",
        "premises",
        "write",
        body=BuildingIn,
        estate=_E("body", "estate_id"),
    ),
    Route(
        "GET",
        "/floors/{floor_id}",
        Action.PREMISES_READ,
        "billing",
        "楼层 · A floor",
        "premises",
        estate=_E("path", "floor_id", "floor"),
        response=billing_contract.FloorRecordOut,
    ),
    Route(
        "PUT",
        "/floors/{floor_id}",
        Action.PREMISES_WRITE,
        "billing",
        "建立/修改楼层 · Create or update a floor",
        "premises",
        "write",
        body=FloorIn,
    ),
    Route(
        "GET",
        "/rooms",
        Action.PREMISES_READ,
        "billing",
        "房间 · Rooms",
        "premises",
        "list",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "building_id", "floor", "occupied", "level", "code"),
        sorts=("code", "room_id", "floor", "area", "building_id", "tenant_name"),
        description="With the household leasing each room now and its balance level. `floor` is the floor's "
        "level, `occupied` true or false, `level` a balance level (ok, low_1, low_2, exhausted: households "
        "listed by balance level), `code` a fragment of the room code.",
    ),
    Route(
        "GET",
        "/rooms/{room_id}",
        Action.PREMISES_READ,
        "billing",
        "房间 · A room with its leases",
        "premises",
        estate=_E("path", "room_id", "room"),
        response=billing_contract.RoomDetailOut,
    ),
    Route(
        "PUT",
        "/rooms/{room_id}",
        Action.PREMISES_WRITE,
        "billing",
        "建立/修改房间 · Create or update a room",
        "premises",
        "write",
        body=RoomIn,
    ),
    Route(
        "GET",
        "/rooms/{room_id}/meters/{meter_id}",
        Action.PREMISES_READ,
        "billing",
        "房间表计 · A meter installed in a room",
        "premises",
        estate=_E("path", "room_id", "room"),
        response=billing_contract.RoomMeterOut,
    ),
    Route(
        "PUT",
        "/rooms/{room_id}/meters/{meter_id}",
        Action.PREMISES_WRITE,
        "billing",
        "房间装表 · Bind a meter to a room (effective-dated)",
        "premises",
        "write",
        body=RoomMeterIn,
        estate=_E("path", "room_id", "room"),
    ),
    Route(
        "GET",
        "/tenants",
        Action.PREMISES_READ,
        "billing",
        "租户 · Tenants",
        "premises",
        "list",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "name", "phone"),
        sorts=("name", "tenant_id", "phone"),
        description="`name` and `phone` match fragments; a tenant belongs to an estate through any lease there.",
    ),
    Route(
        "GET",
        "/tenants/{tenant_id}",
        Action.PREMISES_READ,
        "billing",
        "租户 · A tenant",
        "premises",
        response=billing_contract.TenantRecordOut,
    ),
    Route(
        "PUT",
        "/tenants/{tenant_id}",
        Action.PREMISES_WRITE,
        "billing",
        "建立/修改租户 · Create or update a tenant",
        "premises",
        "write",
        body=TenantIn,
    ),
    Route(
        "GET",
        "/tenants/{tenant_id}/scope",
        Action.PREMISES_READ,
        "billing",
        "租户范围 · Accounts, rooms and meters of a tenant's active leases",
        "premises",
        response=billing_contract.ScopeOut,
    ),
    Route(
        "PUT",
        "/leases/{lease_id}",
        Action.PREMISES_WRITE,
        "billing",
        "入住 · Move a household in (idempotent)",
        "premises",
        "write",
        body=LeaseIn,
        estate=_E("body", "room_id", "room"),
        response=billing_contract.LeaseOut,
    ),
    Route(
        "GET",
        "/leases/{lease_id}",
        Action.PREMISES_READ,
        "billing",
        "租约 · A lease",
        "premises",
        estate=_LEASE,
        response=billing_contract.LeaseWithEstateOut,
    ),
    Route(
        "POST",
        "/leases/{lease_id}/move-out",
        Action.PREMISES_WRITE,
        "billing",
        "退租 · Move a household out",
        "premises",
        "write",
        body=MoveOutIn,
        estate=_LEASE,
        response=billing_contract.LeaseOut,
    ),
    Route(
        "POST",
        "/leases/{lease_id}/settlement",
        Action.CORRECTIONS_CREATE,
        "billing",
        "退租结算 · Settle a move-out: final readings, final bill, refund (idempotent)",
        "premises",
        "money",
        body=SettlementIn,
        estate=_LEASE,
        response=billing_contract.LeaseSettlementOut,
    ),
    Route(
        "GET",
        "/leases/{lease_id}/settlement",
        Action.ACCOUNTS_READ,
        "billing",
        "退租结算单 · A lease's settlement",
        "premises",
        estate=_LEASE,
        response=billing_contract.LeaseSettlementOut,
    ),
    # accounts, payments, tariffs (billing)
    Route(
        "GET",
        "/accounts/{account_id}",
        Action.ACCOUNTS_READ,
        "billing",
        "账户余额 · An account and its balance",
        "accounts",
        estate=_ACCOUNT,
        response=billing_contract.AccountOut,
    ),
    Route(
        "PUT",
        "/accounts/{account_id}",
        Action.ACCOUNTS_WRITE,
        "billing",
        "建立/修改账户 · Create or update an account",
        "accounts",
        "write",
        body=AccountIn,
        estate=_ACCOUNT,
    ),
    Route(
        "GET",
        "/accounts/{account_id}/ledger",
        Action.ACCOUNTS_READ,
        "billing",
        "账本 · Ledger entries, newest first",
        "accounts",
        "list",
        estate=_ACCOUNT,
    ),
    Route(
        "GET",
        "/accounts/{account_id}/usage",
        Action.ACCOUNTS_READ,
        "billing",
        "用量历史 · Usage history per utility with cost",
        "accounts",
        estate=_ACCOUNT,
        filters=("granularity", "start", "end"),
        response=billing_contract.AccountUsageOut,
    ),
    Route(
        "POST",
        "/accounts/{account_id}/topups",
        Action.TOPUPS_CREATE,
        "billing",
        "柜台充值 · Top up at the counter (idempotent)",
        "payments",
        "money",
        estate=_ACCOUNT,
        body=TopUpIn,
        response=billing_contract.PaymentOut,
    ),
    Route(
        "POST",
        "/accounts/{account_id}/subsidies",
        Action.CORRECTIONS_CREATE,
        "billing",
        "补贴 · Credit a subsidy (idempotent)",
        "payments",
        "money",
        body=SubsidyIn,
        estate=_ACCOUNT,
        response=billing_contract.SubsidyOut,
    ),
    Route(
        "POST",
        "/ledger/transactions/{txn_id}/reversal",
        Action.CORRECTIONS_CREATE,
        "billing",
        "冲正 · Reverse a ledger transaction (idempotent)",
        "payments",
        "money",
        body=ReasonIn,
        response=billing_contract.CorrectionOut,
    ),
    Route(
        "GET",
        "/ledger/transactions/{txn_id}/explain",
        Action.ACCOUNTS_READ,
        "billing",
        "费用解释 · Explain a transaction: readings, tariff, quantity, price, rounding",
        "accounts",
        response=billing_contract.ExplanationOut,
    ),
    Route("GET", "/corrections", Action.ACCOUNTS_READ, "billing", "冲正记录 · Corrections", "payments", "list"),
    Route(
        "GET",
        "/held-readings",
        Action.ACCOUNTS_READ,
        "billing",
        "待复核读数 · Readings held for review",
        "accounts",
        "list",
    ),
    Route(
        "GET",
        "/unknown-meters",
        Action.ACCOUNTS_READ,
        "billing",
        "未登记表计 · Meters with readings but nobody to bill (not billed); per billing replica since it started",
        "accounts",
        response=billing_contract.UnknownMetersOut,
    ),
    Route(
        "GET",
        "/payments",
        Action.ACCOUNTS_READ,
        "billing",
        "缴费记录 · Payments",
        "payments",
        "list",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "account_id", "channel", "state", "start", "end"),
        sorts=("created_at", "amount", "account_id", "channel"),
        description="Newest first by default. `state`: paid, partly_refunded, refunded or reversed; `start` "
        "(inclusive) and `end` (exclusive) are local dates (YYYY-MM-DD) or aware ISO 8601 instants.",
    ),
    Route(
        "GET",
        "/payments/orders/{order_id}",
        Action.ACCOUNTS_READ,
        "billing",
        "支付订单 · An online payment order",
        "payments",
        response=billing_contract.OrderOut,
    ),
    Route(
        "POST",
        "/payments/{payment_id}/refunds",
        Action.CORRECTIONS_CREATE,
        "billing",
        "退款 · Refund a payment (idempotent)",
        "payments",
        "money",
        body=RefundIn,
        response=billing_contract.RefundOut,
    ),
    Route(
        "GET",
        "/payments/reviews",
        Action.ACCOUNTS_READ,
        "billing",
        "待匹配款项 · Payments to review",
        "payments",
        "list",
    ),
    Route(
        "POST",
        "/cash/shifts",
        Action.TOPUPS_CREATE,
        "billing",
        "开班 · Open a cash-counter shift (idempotent)",
        "payments",
        "money",
        body=ShiftIn,
        response=billing_contract.ShiftOut,
    ),
    Route(
        "GET",
        "/cash/shifts/{shift_id}",
        Action.TOPUPS_CREATE,
        "billing",
        "收银班次 · A cash-counter shift",
        "payments",
        response=billing_contract.ShiftOut,
    ),
    Route(
        "POST",
        "/cash/shifts/{shift_id}/payments",
        Action.TOPUPS_CREATE,
        "billing",
        "现金收款 · Take a cash payment in a shift (idempotent)",
        "payments",
        "money",
        body=CashPaymentIn,
        response=billing_contract.ReceiptOut,
    ),
    Route(
        "POST",
        "/cash/shifts/{shift_id}/close",
        Action.TOPUPS_CREATE,
        "billing",
        "交班 · Close a shift with the counted cash (idempotent)",
        "payments",
        "money",
        body=CloseShiftIn,
        response=billing_contract.ShiftOut,
    ),
    Route(
        "GET",
        "/tariffs/{utility}",
        Action.TARIFFS_READ,
        "billing",
        "价格 · A utility's tariff versions",
        "tariffs",
        response=billing_contract.TariffOut,
    ),
    Route(
        "PUT",
        "/tariffs/{utility}",
        Action.TARIFFS_WRITE,
        "billing",
        "设定价格 · Set a flat price from a date on",
        "tariffs",
        "write",
        body=TariffIn,
    ),
    Route(
        "GET",
        "/tariffs/{utility}/versions",
        Action.TARIFFS_READ,
        "billing",
        "价格版本 · Tariff versions",
        "tariffs",
        "list",
    ),
    Route(
        "POST",
        "/tariffs/{utility}/versions",
        Action.TARIFFS_WRITE,
        "billing",
        "新价格版本 · Add an effective-dated tariff version",
        "tariffs",
        "write",
        body=TariffVersionIn,
        response=billing_contract.TariffVersionAdded,
        status=201,
    ),
    Route(
        "GET",
        "/meters/{meter_id}/binding",
        Action.PREMISES_READ,
        "billing",
        "表计绑定 · A meter's binding and its estate",
        "meters",
        estate=_METER,
        response=billing_contract.MeterBindingOut,
    ),
    Route(
        "PUT",
        "/meters/{meter_id}/binding",
        Action.PREMISES_WRITE,
        "billing",
        "表计绑定 · Bind a meter to an account",
        "meters",
        "write",
        body=BindingIn,
        estate=_E("body", "account_id", "account"),
    ),
    # devices (collector)
    Route(
        "GET",
        "/meters",
        Action.DEVICES_READ,
        "collector",
        "表计状态列表 · Device state of meters",
        "meters",
        "list",
        estate=_E("item", "meter_id", "meter"),
        filters=("gateway_id", "online"),
    ),
    Route(
        "GET",
        "/meters/{meter_id}/state",
        Action.DEVICES_READ,
        "collector",
        "表计状态 · Last known device state",
        "meters",
        estate=_METER,
        response=collector_contract.DeviceStateOut,
    ),
    Route(
        "GET",
        "/gateways/{gateway_id}/status",
        Action.DEVICES_READ,
        "collector",
        "网关状态 · A gateway's status",
        "meters",
        response=collector_contract.GatewayStatusOut,
    ),
    Route(
        "GET",
        "/gateways/{gateway_id}",
        Action.DEVICES_READ,
        "collector",
        "网关 · A registered gateway",
        "meters",
        response=collector_contract.GatewayRecordOut,
    ),
    Route(
        "PUT",
        "/gateways/{gateway_id}",
        Action.DEVICES_WRITE,
        "collector",
        "登记网关 · Create or update a gateway",
        "meters",
        "write",
        body=GatewayIn,
    ),
    Route(
        "GET",
        "/buses/{bus_id}",
        Action.DEVICES_READ,
        "collector",
        "总线 · A registered RS-485 bus",
        "meters",
        response=collector_contract.BusRecordOut,
    ),
    Route(
        "PUT",
        "/buses/{bus_id}",
        Action.DEVICES_WRITE,
        "collector",
        "登记总线 · Create or update an RS-485 bus",
        "meters",
        "write",
        body=BusIn,
    ),
    Route(
        "GET",
        "/meters/{meter_id}",
        Action.DEVICES_READ,
        "collector",
        "表计档案 · A registered meter",
        "meters",
        estate=_METER,
        response=collector_contract.MeterRecordOut,
    ),
    Route(
        "PUT",
        "/meters/{meter_id}",
        Action.DEVICES_WRITE,
        "collector",
        "登记表计 · Create or update a meter",
        "meters",
        "write",
        body=MeterIn,
    ),
    Route(
        "POST",
        "/commissioning",
        Action.DEVICES_WRITE,
        "collector",
        "批量调试导入 · Commission gateways, buses and meters from CSV",
        "meters",
        "csv",
        upstream="/registry/import",
        description="One line per meter; every line is checked, all or nothing (the collector's registry import).",
        response=dict[str, int],
    ),
    # commands (control)
    Route(
        "GET",
        "/commands",
        Action.COMMANDS_READ,
        "control",
        "命令 · Commands, newest first",
        "commands",
        "list",
        estate=_E("item", "meter_id", "meter"),
        filters=("meter_id", "state", "kind", "origin"),
    ),
    Route(
        "GET",
        "/commands/{command_id}",
        Action.COMMANDS_READ,
        "control",
        "命令 · A command and its audit trail",
        "commands",
        estate=_E("path", "command_id", "command"),
        response=control_contract.CommandOut,
    ),
    Route(
        "POST",
        "/commands/{command_id}/cancel",
        Action.COMMANDS_CLOSE,
        "control",
        "撤销命令 · Cancel a pending command",
        "commands",
        "write",
        body=ReasonIn,
        estate=_E("path", "command_id", "command"),
        response=control_contract.CommandOut,
    ),
    Route(
        "GET",
        "/meters/{meter_id}/shadow",
        Action.COMMANDS_READ,
        "control",
        "继电器影子 · Desired vs reported relay state",
        "commands",
        estate=_METER,
        response=control_contract.ShadowOut,
    ),
    Route("GET", "/schedules", Action.COMMANDS_READ, "control", "定时命令 · Scheduled commands", "commands", "list"),
    Route(
        "GET",
        "/keep-power",
        Action.COMMANDS_READ,
        "control",
        "保电 · Keep-power households and estates",
        "commands",
        "list",
        estate=_E("item", "subject", "keep_power"),
    ),
    Route(
        "GET",
        "/keep-power/households/{account_id}",
        Action.COMMANDS_READ,
        "control",
        "保电 · A household's keep-power (404: none)",
        "commands",
        estate=_ACCOUNT,
        response=control_contract.KeepPowerOut,
    ),
    Route(
        "PUT",
        "/keep-power/households/{account_id}",
        Action.COMMANDS_TRIP,
        "control",
        "设保电 · Protect a household from cut-off",
        "commands",
        "write",
        body=KeepPowerIn,
        estate=_ACCOUNT,
    ),
    Route(
        "GET",
        "/estates/{estate_id}/policy",
        Action.COMMANDS_READ,
        "control",
        "停电策略 · An estate's cut-off policy (protected windows)",
        "commands",
        estate=_ESTATE,
        response=control_contract.EstatePolicyOut,
    ),
    Route(
        "PUT",
        "/estates/{estate_id}/policy",
        Action.COMMANDS_TRIP,
        "control",
        "设停电策略 · Set an estate's cut-off policy",
        "commands",
        "write",
        body=EstatePolicyIn,
        estate=_ESTATE,
    ),
    # alarms and work orders (alarm)
    Route(
        "GET",
        "/alarms",
        Action.ALARMS_READ,
        "alarm",
        "告警 · Alarms, newest first",
        "alarms",
        "list",
        estate=_E("query", "estate"),
        filters=("estate", "building", "meter_id", "source_id", "alarm_type", "state"),
    ),
    Route(
        "GET",
        "/alarms/{alarm_id}",
        Action.ALARMS_READ,
        "alarm",
        "告警 · An alarm",
        "alarms",
        estate=_ALARM,
        response=alarm_contract.AlarmOut,
    ),
    Route(
        "POST",
        "/alarms/{alarm_id}/acknowledge",
        Action.ALARMS_WRITE,
        "alarm",
        "确认告警 · Acknowledge an alarm",
        "alarms",
        "write",
        body=AcknowledgeIn,
        estate=_ALARM,
        response=alarm_contract.AlarmOut,
    ),
    Route(
        "POST",
        "/alarms/{alarm_id}/resolve",
        Action.ALARMS_WRITE,
        "alarm",
        "手动处理告警 · Resolve an alarm by hand",
        "alarms",
        "write",
        body=AlarmResolveIn,
        estate=_ALARM,
        response=alarm_contract.AlarmOut,
        description="Closes the alarm with who and why (kept in its action log). If the problem comes back, a new "
        "alarm opens. 409 `invalid_transition` when it is already closed.",
    ),
    Route(
        "GET",
        "/alarms/{alarm_id}/actions",
        Action.ALARMS_READ,
        "alarm",
        "告警操作记录 · An alarm's action log",
        "alarms",
        estate=_ALARM,
        response=list[alarm_contract.AlarmActionOut],
    ),
    Route(
        "GET",
        "/faults",
        Action.ALARMS_READ,
        "alarm",
        "设备故障 · Open device faults",
        "alarms",
        "list",
        estate=_E("query", "estate"),
        filters=("estate", "building"),
    ),
    Route(
        "GET",
        "/work-orders",
        Action.ALARMS_READ,
        "alarm",
        "工单 · Work orders",
        "alarms",
        "list",
        estate=_E("query", "estate"),
        filters=("estate", "building", "status", "device_id", "fault_type"),
        description="`status`: open, assigned, in_progress, resolved or closed; `device_id` the meter or gateway.",
    ),
    Route(
        "GET",
        "/work-orders/mttr",
        Action.REPORTS_READ,
        "alarm",
        "平均修复时间 · Mean time to repair per estate",
        "reports",
        "list",
        estate=_E("item", "estate"),
        filters=("since", "until"),
        description="One row per estate: repairs and their mean seconds; `since`/`until` are aware ISO 8601 instants.",
    ),
    Route(
        "GET",
        "/work-orders/{work_order_id}",
        Action.ALARMS_READ,
        "alarm",
        "工单 · A work order",
        "alarms",
        estate=_WORK_ORDER,
        response=alarm_contract.WorkOrderOut,
    ),
    Route(
        "PATCH",
        "/work-orders/{work_order_id}",
        Action.ALARMS_WRITE,
        "alarm",
        "更新工单 · Update a work order",
        "alarms",
        "write",
        body=WorkOrderPatch,
        estate=_WORK_ORDER,
        response=alarm_contract.WorkOrderOut,
    ),
    # reports
    Route(
        "GET",
        "/reports/arrears",
        Action.REPORTS_READ,
        "billing",
        "欠费清单 · Arrears list",
        "reports",
        "list",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "min_days"),
        sorts=("days_in_arrears", "owed", "balance", "since", "room_code", "account_id", "tenant_name"),
        description="Purses whose ledger balance (paid + subsidy credit) is below zero, with room, tenant, balance "
        "and whole days in arrears since the entry that took the balance below zero; longest first by default.",
    ),
    Route(
        "GET",
        "/reports/revenue",
        Action.REPORTS_READ,
        "billing",
        "收入 · Revenue by channel and day",
        "reports",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "start", "end"),
        description="Per local day and channel over [start, end): top-ups, refunds, 冲正 and the net — the channel "
        "ledger account's movement, so it balances with the ledger to the fen. `start`/`end`: local dates or aware "
        "instants (default: this month until now; at most 400 days).",
        response=billing_contract.RevenueOut,
    ),
    Route(
        "GET",
        "/reports/consumption",
        Action.REPORTS_READ,
        "billing",
        "用量 · Consumption by building",
        "reports",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "start", "end", "utility"),
        description="kWh / m³ and exact cost per building and utility over [start, end) from the hourly usage, "
        "the estate's common meters, and the 公摊 posted to each building's households.",
        response=billing_contract.ConsumptionReportOut,
    ),
    Route(
        "GET",
        "/reports/collection-rate",
        Action.REPORTS_READ,
        "billing",
        "收缴率 · Collection rate",
        "reports",
        estate=_E("query", "estate_id"),
        filters=("estate_id", "month"),
        required=("month",),
        description="收缴率 = 实收 ÷ 应收 for a local month (`month`=YYYY-MM, required), per estate. 应收 (billable): usage, fixed "
        "fees and 公摊 charged to households, net of their 冲正. 实收 (collected): households' top-ups through every "
        "channel, net of refunds and their 冲正. Subsidies are shown apart; prepaid money can push the rate over 100 %.",
        response=billing_contract.CollectionOut,
    ),
)


# Where each kind of object's estate is read: (service, path, field of the answer).
ESTATE_LOOKUPS: dict[str, tuple[str, str, str]] = {
    "account": ("billing", "/v1/accounts/{}", "estate_id"),
    "room": ("billing", "/v1/rooms/{}", "estate_id"),
    "lease": ("billing", "/v1/leases/{}", "estate_id"),
    "building": ("billing", "/v1/buildings/{}", "estate_id"),
    "floor": ("billing", "/v1/floors/{}", "estate_id"),
    "meter": ("billing", "/v1/meters/{}/binding", "estate_id"),
    "alarm": ("alarm", "/v1/alarms/{}", "estate"),
    "work_order": ("alarm", "/v1/work-orders/{}", "estate"),
}


async def estate_of(upstreams: Upstreams, kind: str, object_id: str) -> str | None:
    """The estate an object belongs to, or None when it does not exist (or has none)."""
    if kind == "estate":
        return object_id
    try:
        if kind == "command":
            command = await upstreams.call("control", "GET", f"/v1/commands/{object_id}")
            return await estate_of(upstreams, "meter", str(command["meter_id"]))
        service, path, name = ESTATE_LOOKUPS[kind]
        found = await upstreams.call(service, "GET", path.format(object_id))
    except UpstreamError as err:
        if err.status_code in (404, 422):  # 422: not even a well-formed id of that kind
            return None
        raise
    estate = found.get(name) if isinstance(found, dict) else None
    return str(estate) if estate is not None else None


async def estate_meters(upstreams: Upstreams, estates: frozenset[str]) -> set[str]:
    """The meters bound now in any of `estates` (billing's bindings)."""
    meters: set[str] = set()
    for estate in sorted(estates):
        try:
            found = await upstreams.call("billing", "GET", f"/v1/estates/{estate}/meters")
        except UpstreamError as err:
            if err.status_code == 404:
                continue  # an estate on the user that billing does not know (yet): nothing in it
            raise
        meters.update(str(m) for m in found.get("meters", []))
    return meters


async def in_estates(rule: EstateOf, principal: Principal, upstreams: Upstreams, items: list[Any]) -> list[Any]:
    """The rows of a listing that lie in the caller's estates (all of them for an all-estates caller)."""
    if principal.all_estates:
        return items
    rows = [i for i in items if isinstance(i, dict)]
    if rule.kind == "meter":
        meters = await estate_meters(upstreams, principal.estates)
        return [i for i in rows if str(i.get(rule.name)) in meters]
    if rule.kind == "keep_power":  # a household's flag is its account's estate, an estate's its own
        kept = []
        for i in rows:
            kind = "account" if i.get("scope") == "household" else "estate"
            if principal.may_see_estate(await estate_of(upstreams, kind, str(i.get(rule.name)))):
                kept.append(i)
        return kept
    return [i for i in rows if principal.may_see_estate(None if i.get(rule.name) is None else str(i[rule.name]))]


async def guard_estate(
    route: Route, principal: Principal, upstreams: Upstreams, path: dict[str, str], query: dict[str, Any], body: Any
) -> None:
    """Keep estate-scoped principals inside their estates (fills a single estate into listings)."""
    if principal.all_estates:
        return
    rule = route.estate
    if rule is None:
        raise Forbidden("this listing spans every estate; it needs an all-estates role / 需全部小区权限")
    if rule.source == "item":
        named = query.get(rule.name) if rule.kind == "meter" else None
        if named is not None and not principal.may_see_estate(await estate_of(upstreams, "meter", str(named))):
            raise Forbidden(f"{rule.name} is outside your estates / 超出您管理的小区")
        return  # the rows are filtered once fetched
    if rule.source == "query":
        wanted = query.get(rule.name)
        if wanted is None and len(principal.estates) == 1:
            query[rule.name] = wanted = next(iter(principal.estates))
        if wanted is None or not principal.may_see_estate(str(wanted)):
            raise Forbidden(f"pass {rule.name}= one of your estates / 请指定您管理的小区")
        return
    value = path.get(rule.name) if rule.source == "path" else (body or {}).get(rule.name)
    estate = await estate_of(upstreams, rule.kind, str(value)) if value is not None else None
    if not principal.may_see_estate(estate):
        if rule.source == "path":
            raise ObjectNotFound(f"no such {rule.kind}")
        raise Forbidden(f"{rule.name} is outside your estates / 超出您管理的小区")


# Path parameters the backends type more strictly than an identifier: the gateway documents (and checks) the same,
# so a schema-valid request is never a backend's 422.
UUID_PATH_PARAMETERS = frozenset(
    {"txn_id", "payment_id", "shift_id", "command_id", "alarm_id", "work_order_id", "schedule_id", "notification_id"}
)


def _path_parameter(name: str) -> Any:
    if name in UUID_PATH_PARAMETERS:
        return uuid.UUID
    if name == "utility":
        return Literal["electricity", "water"]
    return Annotated[str, Path(min_length=1, max_length=64, pattern=IDENT)]


_iso_text = written_as(ISO_DAY_OR_INSTANT, "a date (YYYY-MM-DD) or an instant with its offset")


# Query filters the backends type beyond a word, by (route path, filter): the gateway documents and checks the
# same, so a request its OpenAPI calls valid is never a backend's 422 (test_gateway_contracts.py compares them).
BalanceLevel = Literal["ok", "low_1", "low_2", "exhausted"]
FILTER_TYPES: dict[tuple[str, str], Any] = {
    ("/rooms", "floor"): Annotated[int, Query(ge=-5, le=200)],
    ("/rooms", "occupied"): bool,
    ("/rooms", "level"): BalanceLevel,
    ("/accounts/{account_id}/usage", "granularity"): Literal["hour", "day", "month"],
    ("/payments", "channel"): Literal["cash", "bank", "wechat", "alipay", "sandbox"],
    ("/payments", "state"): Literal["paid", "partly_refunded", "refunded", "reversed"],
    ("/meters", "online"): bool,
    ("/commands", "state"): Literal["pending", "sent", "acknowledged", "confirmed", "failed", "expired", "cancelled"],
    ("/commands", "kind"): CommandKindName,
    ("/commands", "origin"): Literal["billing", "operator", "schedule", "integrator", "reconcile"],
    ("/alarms", "state"): Literal["active", "acknowledged", "cleared"],
    ("/work-orders", "status"): Literal["open", "assigned", "in_progress", "resolved", "closed"],
    ("/reports/arrears", "min_days"): Annotated[int, Query(ge=0, le=36500)],
    ("/reports/consumption", "utility"): UtilityName,
}


def _filter_type(route: Route, name: str) -> Any:
    """An optional query filter as the backend types it: instants for `since`/`until` (and a usage window), a local
    date or an instant for the other `start`/`end`, an enumeration, number or flag from FILTER_TYPES, otherwise a
    non-empty word."""
    typed = FILTER_TYPES.get((route.path, name))
    if typed is not None:
        return typed | None
    if name in ("since", "until") or (name in ("start", "end") and route.path.endswith("/usage")):
        instant = Query(alias=name, description="ISO 8601 instant with its offset")
        return Annotated[AwareDatetime | None, BeforeValidator(_iso_text), instant]
    if name in ("start", "end"):
        described = Query(alias=name, description="a local date (YYYY-MM-DD) or an ISO 8601 instant with its offset")
        return Annotated[date | AwareDatetime | None, BeforeValidator(_iso_text), described]
    return Annotated[str | None, Query(alias=name, min_length=1, max_length=64, pattern=WORD)]


def _params(route: Route) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("request", kw, annotation=Request),
        inspect.Parameter("principal", kw, annotation=Annotated[Principal, Depends(require(route.action))]),
        inspect.Parameter("upstreams", kw, annotation=UpstreamsDep),
    ]
    for name in _path_names(route.path):
        params.append(inspect.Parameter(name, kw, annotation=_path_parameter(name)))
    if route.kind == "list" or route.filters:
        for name in route.filters:
            if name in route.required:
                kind: Any = (
                    MonthQuery
                    if name == "month"
                    else Annotated[str, Query(alias=name, min_length=1, max_length=64, pattern=WORD)]
                )
                params.append(inspect.Parameter(_argument(name), kw, annotation=kind))
                continue
            if name == "month":  # a local month: the strict YYYY-MM of every report and statement
                month = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM, local time")]
                params.append(inspect.Parameter(name, kw, default=None, annotation=month))
                continue
            params.append(inspect.Parameter(_argument(name), kw, default=None, annotation=_filter_type(route, name)))
    if route.kind == "list":
        params += [
            inspect.Parameter("limit", kw, default=50, annotation=Limit),
            inspect.Parameter("cursor", kw, default=None, annotation=Cursor),
            inspect.Parameter("sort", kw, default=None, annotation=Sort),
        ]
    if route.kind in ("write", "money"):
        model: Any = route.body
        if model is None:
            examples = {"example": {"value": route.example}} if route.example else None
            params.append(
                inspect.Parameter("body", kw, annotation=Annotated[dict[str, Any], Body(openapi_examples=examples)])  # type: ignore[arg-type]
            )
        elif model.model_fields:
            params.append(inspect.Parameter("body", kw, annotation=model))
        else:  # nothing to say: the body may be left out
            params.append(inspect.Parameter("body", kw, default=None, annotation=Annotated[model | None, Body()]))
    if route.kind == "money":
        params.append(inspect.Parameter("idempotency_key", kw, annotation=IdempotencyKey))
    if route.method in ("PUT", "PATCH"):
        params.append(inspect.Parameter("if_match", kw, default=None, annotation=IfMatch))
    return params


def _argument(name: str) -> str:
    """The endpoint's argument for a query filter (`from` and `to` are Python keywords)."""
    return {"from": "from_", "to": "to_"}.get(name, name)


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _endpoint(route: Route) -> Any:
    path_names = _path_names(route.path)
    upstream_path = "/v1" + (route.upstream or route.path)

    async def endpoint(**kwargs: Any) -> Any:
        request: Request = kwargs["request"]
        principal: Principal = kwargs["principal"]
        upstreams: Upstreams = kwargs["upstreams"]
        path = {name: str(kwargs[name]) for name in path_names}
        query = {name: kwargs[_argument(name)] for name in route.filters}
        query = {k: v.isoformat() if isinstance(v, date) else v for k, v in query.items() if v is not None}
        body = kwargs.get("body")
        if isinstance(body, BaseModel):
            # What the client sent, explicit nulls included (a null night window switches it off); what it
            # left out the backend defaults, as the gateway's model does.
            body = body.model_dump(mode="json", exclude_unset=True)
        await guard_estate(route, principal, upstreams, path, query, body)
        target = upstream_path.format(**path)
        if route.kind == "list" and route.sorts:
            offset = decode_cursor(kwargs["cursor"])
            sort = {"sort": kwargs["sort"]} if kwargs["sort"] else {}
            found = await upstreams.call(
                route.service, "GET", target, params={**query, **sort, "limit": kwargs["limit"], "offset": offset}
            )
            if not isinstance(found, dict):  # a backend that does not page (yet): page its rows here
                return page_of_all(found or [], kwargs["limit"], kwargs["cursor"], kwargs["sort"])
            following = found.get("next_offset")
            return {"items": found["items"], "next_cursor": None if following is None else encode_cursor(following)}
        if route.kind == "list":
            limit: int = kwargs["limit"]
            # Sorting needs the whole window; without it, enough rows to know whether a next page exists.
            # Rows filtered here by estate need the whole window too.
            filtered = route.estate is not None and route.estate.source == "item" and not principal.all_estates
            wanted = (
                UPSTREAM_PAGE_CAP
                if kwargs["sort"] or filtered
                else min(decode_cursor(kwargs["cursor"]) + limit + 1, UPSTREAM_PAGE_CAP)
            )
            found = await upstreams.call(route.service, "GET", target, params={**query, "limit": wanted})
            items = found.get("items", []) if isinstance(found, dict) else (found or [])
            if route.estate is not None and route.estate.source == "item":
                items = await in_estates(route.estate, principal, upstreams, items)
            return page_of_all(items, limit, kwargs["cursor"], kwargs["sort"])
        if route.kind == "object":
            found = await upstreams.call(route.service, "GET", target, params=query or None)
            return JSONResponse(found, headers={"ETag": etag_of(found)})
        if route.kind == "csv":
            content = await request.body()
            if not re.match(CSV_HEADER, content.decode("utf-8", errors="replace")):
                raise InvalidRequest("send text/csv in UTF-8 whose first row names the columns")
            raw = await upstreams.raw(
                route.service, "POST", target, content=content, headers={"Content-Type": "text/csv"}
            )
            return JSONResponse(raw.json() if raw.content else None, status_code=raw.status_code)
        if kwargs.get("if_match") is not None:
            try:
                current = await upstreams.call(route.service, "GET", target)
            except UpstreamError as err:
                if err.status_code != 404:
                    raise
                raise PreconditionFailed("nothing to match: it does not exist / 对象不存在") from err
            check_etag(kwargs["if_match"], current)
        if route.kind == "money":
            store = container_of(request).idempotency
            key: str = kwargs["idempotency_key"]

            async def forward() -> tuple[int, Any]:
                raw = await upstreams.raw(
                    route.service,
                    route.method,
                    target,
                    json=body,
                    headers={"Idempotency-Key": upstream_key(principal, key)},
                )
                return raw.status_code, raw.json() if raw.content else None

            return await store.run(principal, key, request, body, forward)
        raw = await upstreams.raw(route.service, route.method, target, json=body)
        if raw.status_code == 204 or not raw.content:
            return Response(status_code=204)
        return JSONResponse(raw.json(), status_code=raw.status_code)

    endpoint.__signature__ = inspect.Signature(_params(route))  # type: ignore[attr-defined]
    endpoint.__name__ = f"{route.method.lower()}_{route.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('-', '_')}"
    return endpoint


def _sorts_note(route: Route) -> str:
    return f" Sort by {', '.join(f'`{s}`' for s in route.sorts)} (prefix `-` for descending)." if route.sorts else ""


def _openapi_extra(route: Route) -> dict[str, Any]:
    extra: dict[str, Any] = {"x-required-action": route.action.value, **route.extra}
    if route.kind == "csv":
        extra["requestBody"] = {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string", "pattern": CSV_HEADER},
                    "example": "gateway_id,bus_id,host,port,protocol,meter_id,address,model,utility\n"
                    "GW1,GW1-1,10.0.0.7,10001,dlt645,E-1-101,000000000101,dds1588,electricity\n",
                }
            },
        }
    return extra


def success_status(route: Route) -> int:
    if route.status is not None:
        return route.status
    if route.kind == "money":
        return 201
    return 204 if route.kind == "write" and route.response is None else 200


def build_router() -> APIRouter:
    """One route per row of ROUTES. A route's documented answer is its backend's contract model (or a Page of
    rows), which the gateway forwards as the backend wrote it: the gateway is a thin client, and the contract
    models are checked against the backends' own schemas (test_gateway_contracts.py)."""
    router = APIRouter(prefix="/v1", responses=ERRORS)
    for route in ROUTES:
        if route.kind in ("object", "money", "csv") and route.response is None:
            raise TypeError(f"{route.method} {route.path}: say what the backend answers (response=)")
        router.add_api_route(
            route.path,
            _endpoint(route),
            methods=[route.method],
            summary=route.summary,
            description=(route.description + _sorts_note(route) + f"\n\nNeeds `{route.action.value}`.").strip(),
            tags=[route.tag],
            response_model=Page if route.kind == "list" else route.response,
            status_code=success_status(route),
            openapi_extra=_openapi_extra(route),
        )
    router.include_router(commands)
    router.include_router(reports)
    return router


# -- commands: the action depends on the command kind, so these are written out -----------------
commands = APIRouter(tags=["commands"], responses=ERRORS)
Commands = Annotated[Principal, Depends(require(Action.COMMANDS_READ))]
Upstream = UpstreamsDep
Parameters = Annotated[dict[str, Text], Field(default_factory=dict, max_length=32)]


class CommandIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"meter_id": "E-1-101", "kind": "trip", "reason": "欠费停电 / arrears"}]},
    )

    meter_id: Identifier
    kind: CommandKindName
    reason: Text = Field(min_length=1, max_length=500)
    ttl_seconds: Whole = Field(default=600, ge=10, le=7 * 24 * 3600)
    parameters: Parameters
    override_windows: bool = Field(default=False, description="cut off inside a protected window (needs commands:trip)")
    lift_keep_power: bool = Field(default=False, description="clear the household's 保电 flag (needs commands:trip)")


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"meters": ["E-1-101", "E-1-102"], "kind": "time_sync", "reason": "月度校时"}]},
    )

    meters: list[Identifier] = Field(min_length=1, max_length=500)
    kind: CommandKindName
    reason: Text = Field(min_length=1, max_length=500)
    ttl_seconds: Whole = Field(default=600, ge=10, le=7 * 24 * 3600)
    parameters: Parameters
    override_windows: bool = False
    lift_keep_power: bool = False


class ScheduleIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"name": "每日校时", "kind": "time_sync", "at_local": "02:00:00", "meters": ["E-1-101"]}]
        },
    )

    name: Text = Field(min_length=1, max_length=100)
    kind: CommandKindName
    at_local: WallClock = Field(description="daily, local wall-clock time (Asia/Shanghai unless configured)")
    meters: list[Identifier] = Field(min_length=1, max_length=500)
    parameters: Parameters


class CommandAccepted(BaseModel):
    command_id: uuid.UUID


def _may_issue(principal: Principal, kind: CommandKind, override: bool = False) -> None:
    cuts = kind.value in CUT_OFF_KINDS or override
    needed = Action.COMMANDS_TRIP if cuts else Action.COMMANDS_CLOSE
    if not principal.may(needed):
        raise Forbidden(f"{kind.value} needs {needed.value} / 无权下发此命令")


async def _guard_meters(principal: Principal, upstreams: Upstreams, meter_ids: list[str]) -> None:
    if principal.all_estates:
        return
    for meter_id in sorted(set(meter_ids)):
        if not principal.may_see_estate(await estate_of(upstreams, "meter", meter_id)):
            raise Forbidden(f"meter {meter_id} is outside your estates / 超出您管理的小区")


def _reason(reason: str, principal: Principal) -> str:
    return f"{reason} (by {principal.name})"[:500]


@commands.post(
    "/commands",
    status_code=202,
    response_model=CommandAccepted,
    summary="下发命令 · Issue a device command (idempotent)",
    description="`trip`, `valve_close`, `keep_power_off` and overriding a protected window or keep-power need "
    "`commands:trip`; other kinds `commands:close`.",
)
async def issue_command(
    body: CommandIn,
    request: Request,
    principal: Commands,
    upstreams: Upstream,
    store: Idempotency,
    idempotency_key: IdempotencyKey,
) -> Any:
    _may_issue(principal, body.kind, body.override_windows or body.lift_keep_power)
    await _guard_meters(principal, upstreams, [body.meter_id])

    async def forward() -> tuple[int, Any]:
        sent = body.model_dump(mode="json")
        # The same key always names the same command, so control de-duplicates retries too.
        sent["command_id"] = upstream_key(principal, idempotency_key)
        sent["origin"] = "integrator" if principal.role is Role.INTEGRATOR else "operator"
        sent["reason"] = _reason(body.reason, principal)
        return 202, await upstreams.call("control", "POST", "/v1/commands", json=sent)

    return await store.run(principal, idempotency_key, request, body.model_dump(mode="json"), forward)


@commands.post(
    "/commands/batch",
    status_code=202,
    response_model=control_contract.BatchOut,
    summary="批量下发 · One command to many meters (idempotent; control applies policy per meter)",
)
async def issue_batch(
    body: BatchIn,
    request: Request,
    principal: Commands,
    upstreams: Upstream,
    store: Idempotency,
    idempotency_key: IdempotencyKey,
) -> Any:
    _may_issue(principal, body.kind, body.override_windows or body.lift_keep_power)
    await _guard_meters(principal, upstreams, body.meters)

    async def forward() -> tuple[int, Any]:
        sent = {**body.model_dump(mode="json"), "reason": _reason(body.reason, principal)}
        return 202, await upstreams.call("control", "POST", "/v1/batches", json=sent)

    return await store.run(principal, idempotency_key, request, body.model_dump(mode="json"), forward)


@commands.post(
    "/commands/scheduled",
    status_code=201,
    response_model=control_contract.ScheduleOut,
    summary="定时命令 · A daily scheduled command (idempotent)",
    description="Stored by control as a schedule (`GET /v1/schedules` lists them).",
)
async def schedule_command(
    body: ScheduleIn,
    request: Request,
    principal: Commands,
    upstreams: Upstream,
    store: Idempotency,
    idempotency_key: IdempotencyKey,
) -> Any:
    _may_issue(principal, body.kind)
    await _guard_meters(principal, upstreams, body.meters)

    async def forward() -> tuple[int, Any]:
        return 201, await upstreams.call("control", "POST", "/v1/schedules", json=body.model_dump(mode="json"))

    return await store.run(principal, idempotency_key, request, body.model_dump(mode="json"), forward)


# -- the device online rate: the collector knows no estates, so an estate's meters are asked for -------------
reports = APIRouter(tags=["reports"], responses=ERRORS)
RATE = Decimal("0.0001")
METERS_PER_CALL = 500  # keeps each collector URL well under the limits of HTTP clients and servers
Instant = Annotated[AwareDatetime | None, Query(description="aware ISO 8601 instant")]


def _rates(meters: int, online: int, up: float, seen: float) -> dict[str, Any]:
    """The collector's figures for a set of meters (rates to four decimals, half to even, as it rounds them)."""

    def rate(part: float, whole: float) -> str | None:
        return str((Decimal(part) / Decimal(whole)).quantize(RATE, ROUND_HALF_EVEN)) if whole else None

    return {
        "meters": meters,
        "online": online,
        "online_rate": rate(online, meters),
        "availability": rate(up, seen),
        "observed_seconds": round(seen, 3),
        "online_seconds": round(up, 3),
    }


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the collector's reports of disjoint sets of meters."""
    sums: dict[str, list[float]] = {}
    for part in parts:
        for row in part["gateways"]:
            acc = sums.setdefault(row["gateway_id"], [0, 0, 0.0, 0.0])
            for i, name in enumerate(("meters", "online", "online_seconds", "observed_seconds")):
                acc[i] += row[name]
    totals = [sum(acc[i] for acc in sums.values()) for i in range(4)]
    first = parts[0]
    return {
        "at": first["at"],
        "start": first["start"],
        "end": first["end"],
        "total": _rates(int(totals[0]), int(totals[1]), totals[2], totals[3]),
        "gateways": [
            {"gateway_id": g, **_rates(int(acc[0]), int(acc[1]), acc[2], acc[3])} for g, acc in sorted(sums.items())
        ],
    }


@reports.get(
    "/reports/device-online-rate",
    response_model=collector_contract.DeviceOnlineRateOut,
    summary="设备在线率 · Device online rate",
    description="Meters online now, overall and per gateway, and availability over [start, end) (default: the last "
    "24 h) from the collector's online/offline edges; for estate-scoped callers, the meters bound in their estates."
    "\n\nNeeds `reports:read`.",
    openapi_extra={"x-required-action": Action.REPORTS_READ.value},
)
async def device_online_rate(
    principal: Annotated[Principal, Depends(require(Action.REPORTS_READ))],
    upstreams: Upstream,
    gateway_id: Annotated[str | None, Query(max_length=64, pattern=IDENT)] = None,
    start: Instant = None,
    end: Instant = None,
) -> Any:
    window = {"start": start.isoformat() if start else None, "end": end.isoformat() if end else None}
    params = {k: v for k, v in {"gateway_id": gateway_id, **window}.items() if v is not None}
    path = "/v1/reports/device-online-rate"
    if principal.all_estates:
        return await upstreams.call("collector", "GET", path, params=params)
    meters = sorted(await estate_meters(upstreams, principal.estates))
    chunks = [meters[i : i + METERS_PER_CALL] for i in range(0, len(meters), METERS_PER_CALL)]
    # With no meter in the caller's estates the collector is still asked (for the window it settles on), about
    # a meter id no registry holds, so it reports nothing.
    parts = [
        await upstreams.call("collector", "GET", path, params={**params, "meter_id": chunk})
        for chunk in chunks or [["0.no-meter"]]
    ]
    return _merged(parts)
