"""Alarm's HTTP API: alarms and their history, faults and work orders, rules, targets, subscriptions, tenants'
notification settings and the notification delivery log. Errors are problem+json (shuidian_kit)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, time
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shuidian_alarm.alarms import AlarmQuery, AlarmService, InvalidQuery
from shuidian_alarm.detectors import CONNECTIVITY, Rule, ScopeLevel, rule_to_json
from shuidian_alarm.engine import Evaluator
from shuidian_alarm.maintenance import FAULT_TYPES, WorkOrders
from shuidian_alarm.notify.notifier import Notifier
from shuidian_alarm.notify.preferences import QUIET, Saved, TenantSettings
from shuidian_alarm.rulebook import RuleBook, parse_rule, scope_of
from shuidian_alarm.targets import Target
from shuidian_kit.errors import ServiceError
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts.alarm import NotificationOut
from shuidian_shared.messages import AlarmSeverity, AwareDatetime, Identifier


class Problem(BaseModel):
    """RFC 9457 problem details: the one error format of every service."""

    type: str
    title: str
    status: int
    detail: str
    code: str


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {"application/problem+json": {}}}


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _problem("the body is not JSON"),
    404: _problem("no such object"),
    409: _problem("the change is not allowed in the object's current state"),
    422: _problem("the request did not validate"),
}
router = APIRouter(prefix="/v1", responses=PROBLEMS)


def _state(name: str) -> Any:
    def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(get)


Alarms = Annotated[AlarmService, _state("alarms")]
Book = Annotated[RuleBook, _state("rulebook")]
Engine = Annotated[Evaluator, _state("evaluator")]
Notify = Annotated[Notifier, _state("notifier")]
Orders = Annotated[WorkOrders, _state("work_orders")]
Limit = Annotated[int, Query(ge=1, le=1000)]
NEXT_CURSOR = "X-Next-Cursor"
# Names and filters are printable text: PostgreSQL refuses NUL, and control characters are never meant.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=_PRINTABLE)]
Text = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[^\x00]*$")]
Filter = Annotated[str | None, Query(min_length=1, max_length=100, pattern=_PRINTABLE)]
Cursor = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")]


def _iso_only(value: Any) -> Any:
    # pydantic would read a bare number as a Unix time; an API filter takes ISO 8601 with an offset only.
    if not isinstance(value, datetime) and not (isinstance(value, str) and "T" in value):
        raise ValueError("expected an ISO 8601 date-time with an offset, e.g. 2026-03-01T08:00:00+08:00")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_only)]


def _hh_mm(value: Any) -> Any:
    return value.strftime("%H:%M") if isinstance(value, time) else value


# Quiet hours are local wall-clock times (ALARM_TIMEZONE), not instants: "HH:MM", no offset.
LocalTime = Annotated[
    str, BeforeValidator(_hh_mm), Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["22:00"])
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- alarms ------------------------------------------------------------------------------------------


class AlarmOut(BaseModel):
    alarm_id: uuid.UUID
    source_id: str
    alarm_type: str
    severity: str
    state: str
    message_zh: str
    message_en: str
    details: dict[str, str]
    occurrences: int
    meter_id: str | None
    gateway_id: str | None
    estate: str | None
    building: str | None
    room: str | None
    tenant_id: str | None
    raised_at: datetime
    last_seen_at: datetime
    updated_at: datetime
    escalation_level: int
    escalated_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None


class AcknowledgeIn(Strict):
    by: Name | None = Field(
        default=None, description="ignored (older clients send it): the acknowledger is the caller's credential"
    )


@router.get(
    "/alarms",
    response_model=list[AlarmOut],
    tags=["alarms"],
    summary="告警历史 · Alarm history, newest first",
    description=f"Filters combine with AND. When more may follow, the `{NEXT_CURSOR}` header holds the cursor "
    "of the next page.",
)
async def list_alarms(
    alarms: Alarms,
    response: Response,
    estate: Filter = None,
    building: Filter = None,
    meter_id: Filter = None,
    source_id: Filter = None,
    alarm_type: Filter = None,
    state: Literal["active", "acknowledged", "cleared"] | None = None,
    tenant_id: Filter = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> list[dict[str, Any]]:
    found, more = await alarms.query(
        AlarmQuery(
            estate=estate,
            building=building,
            meter_id=meter_id,
            source_id=source_id,
            alarm_type=alarm_type,
            state=state,
            tenant_id=tenant_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    )
    if more:
        response.headers[NEXT_CURSOR] = more
    return found


@router.get("/alarms/{alarm_id}", response_model=AlarmOut, tags=["alarms"], summary="One alarm")
async def get_alarm(alarm_id: uuid.UUID, alarms: Alarms) -> dict[str, Any]:
    return await alarms.get(alarm_id)


@router.post(
    "/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, tags=["alarms"], summary="确认告警 · Acknowledge"
)
async def acknowledge(
    alarm_id: uuid.UUID, alarms: Alarms, actor: Acting, body: AcknowledgeIn | None = None
) -> dict[str, Any]:
    return await alarms.acknowledge(alarm_id, actor)


@router.get(
    "/faults",
    response_model=list[AlarmOut],
    tags=["maintenance"],
    summary="设备故障 · Device faults for maintenance staff",
)
async def faults(
    alarms: Alarms,
    response: Response,
    estate: Filter = None,
    building: Filter = None,
    device_id: Filter = None,
    fault_type: Filter = None,
    state: Literal["active", "acknowledged", "cleared"] | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> list[dict[str, Any]]:
    if fault_type is not None and fault_type not in FAULT_TYPES:
        raise InvalidQuery(f"fault_type must be one of {sorted(FAULT_TYPES)}")
    found, more = await alarms.query(
        AlarmQuery(
            estate=estate,
            building=building,
            source_id=device_id,
            alarm_type=fault_type,
            alarm_types=tuple(sorted(FAULT_TYPES)),
            state=state,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    )
    if more:
        response.headers[NEXT_CURSOR] = more
    return found


# --- targets -----------------------------------------------------------------------------------------


class TargetIn(Strict):
    gateway_id: Identifier | None = None
    account_id: Identifier | None = None
    model: Name | None = None
    estate: Name | None = None
    building: Name | None = None
    room: Name | None = None
    tenant_id: Identifier | None = None


class TargetOut(TargetIn):
    meter_id: Identifier


class TargetsIn(Strict):
    targets: list[TargetOut] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one_entry_per_meter(self) -> Self:
        if len({t.meter_id for t in self.targets}) != len(self.targets):
            raise ValueError("each meter may appear once")
        return self


@router.put("/targets/{meter_id}", response_model=TargetOut, tags=["targets"], summary="Where a meter belongs")
async def put_target(meter_id: Identifier, body: TargetIn, evaluator: Engine) -> dict[str, Any]:
    target = Target(meter_id=meter_id, **body.model_dump())
    await evaluator.put_targets([target])
    return {"meter_id": meter_id, **body.model_dump()}


@router.put("/targets", tags=["targets"], summary="Where many meters belong (bulk, idempotent)")
async def put_targets(body: TargetsIn, evaluator: Engine) -> dict[str, int]:
    await evaluator.put_targets([Target(**t.model_dump()) for t in body.targets])
    return {"targets": len(body.targets)}


# --- rules -------------------------------------------------------------------------------------------


class RuleIn(Strict):
    scope_level: ScopeLevel
    scope_key: Name | None = Field(default=None, description="none for the default scope")
    slot: Identifier = Field(description="alarm type or rule slot, e.g. over_voltage")
    enabled: bool = True
    rule: dict[str, Any] = Field(description='the rule, with its "kind", e.g. {"kind": "threshold", ...}')


class RuleOut(BaseModel):
    scope_level: str
    scope_key: str
    slot: str
    enabled: bool
    rule: dict[str, Any]
    builtin: bool


def _rule_out(level: str, key: str, slot: str, enabled: bool, rule: Rule, builtin: bool) -> dict[str, Any]:
    return {
        "scope_level": level,
        "scope_key": key,
        "slot": slot,
        "enabled": enabled,
        "rule": json.loads(rule_to_json(rule)),
        "builtin": builtin,
    }


@router.get("/rules", response_model=list[RuleOut], tags=["rules"], summary="Every configured rule")
async def list_rules(book: Book) -> list[dict[str, Any]]:
    await book.load()
    return [
        _rule_out(e.scope.level.value, e.scope.key, e.slot, e.enabled, e.rule, e.updated_at is None)
        for e in book.entries()
    ]


@router.put("/rules", response_model=RuleOut, tags=["rules"], summary="Set a rule at a scope (validated)")
async def put_rule(body: RuleIn, book: Book) -> dict[str, Any]:
    scope = scope_of(body.scope_level, body.scope_key)
    rule = parse_rule(body.slot, body.rule)
    stored = await book.put(scope, body.slot, body.enabled, rule)
    return _rule_out(scope.level.value, scope.key, stored.slot, stored.enabled, stored.rule, False)


@router.delete("/rules", status_code=204, tags=["rules"], summary="Remove a rule from a scope")
async def delete_rule(book: Book, scope_level: ScopeLevel, slot: Identifier, scope_key: Filter = None) -> None:
    await book.delete(scope_of(scope_level, scope_key), slot)


@router.get("/rules/effective", response_model=list[RuleOut], tags=["rules"], summary="The rules that apply to a meter")
async def effective_rules(book: Book, evaluator: Engine, meter_id: Identifier) -> list[dict[str, Any]]:
    await book.load()
    scope = await evaluator.meter_scope(meter_id)
    return [
        _rule_out("effective", meter_id, slot, True, rule, False)
        for slot, rule in book.rules_for(scope).items()
        if slot != CONNECTIVITY
    ]


# --- subscriptions and deliveries --------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")


class SubscriptionIn(Strict):
    audience: Literal["staff", "tenant"]
    role: Identifier | None = Field(default=None, description="staff role, e.g. estate_manager, maintenance")
    estate: Name | None = Field(default=None, description="staff: only this estate (none = all)")
    tenant_id: Identifier | None = None
    channel: Literal["webhook", "email", "sms", "mqtt"]
    address: str = Field(
        default="", max_length=500, pattern=_PRINTABLE, description="URL, e-mail, phone; for mqtt the tenant id"
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, pattern=_PRINTABLE, description="webhook signing secret"
    )
    language: Literal["zh-CN", "en"] = "zh-CN"
    min_severity: AlarmSeverity = AlarmSeverity.WARNING
    alarm_types: list[Identifier] | None = None
    quiet_start: LocalTime | None = None
    quiet_end: LocalTime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.audience == "staff") != (self.role is not None):
            raise ValueError("staff subscriptions need a role, tenant ones have none")
        if (self.audience == "tenant") != (self.tenant_id is not None):
            raise ValueError("tenant subscriptions need a tenant_id, staff ones have none")
        if self.audience == "tenant" and self.estate is not None:
            raise ValueError("a tenant subscription is scoped by its tenant, not an estate")
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError("quiet hours need both quiet_start and quiet_end")
        if self.channel == "mqtt":
            if self.audience != "tenant":
                raise ValueError("MQTT push goes to a tenant's app")
            if self.address not in ("", self.tenant_id):
                raise ValueError("an MQTT subscription's address is its own tenant id")
            self.address = self.tenant_id or ""
        elif self.channel == "webhook":
            if self.audience != "staff" or not self.address.startswith(("http://", "https://")):
                raise ValueError("webhooks are for staff systems and need an http(s) URL")
        elif self.channel == "email" and not _EMAIL.match(self.address):
            raise ValueError("not an e-mail address")
        elif self.channel == "sms" and not _PHONE.match(self.address):
            raise ValueError("not a phone number (digits, optional leading +)")
        return self


class SubscriptionOut(BaseModel):
    subscription_id: uuid.UUID
    audience: str
    role: str | None
    estate: str | None
    tenant_id: str | None
    channel: str
    address: str
    language: str
    min_severity: str
    alarm_types: list[str] | None
    quiet_start: LocalTime | None
    quiet_end: LocalTime | None
    created_at: datetime
    managed_by: str | None = Field(
        default=None, description="tenant_settings when the tenant's notification settings manage it"
    )


@router.post(
    "/subscriptions", response_model=SubscriptionOut, status_code=201, tags=["notifications"], summary="Subscribe"
)
async def subscribe(body: SubscriptionIn, notifier: Notify) -> dict[str, Any]:
    fields = body.model_dump()
    fields["min_severity"] = body.min_severity.value
    for name in ("quiet_start", "quiet_end"):
        fields[name] = time.fromisoformat(fields[name]) if fields[name] else None
    return await notifier.subscribe(fields)


@router.get("/subscriptions", response_model=list[SubscriptionOut], tags=["notifications"], summary="Subscriptions")
async def list_subscriptions(notifier: Notify, tenant_id: Filter = None, estate: Filter = None) -> list[dict[str, Any]]:
    return await notifier.subscriptions(tenant_id, estate)


@router.delete("/subscriptions/{subscription_id}", status_code=204, tags=["notifications"], summary="Unsubscribe")
async def unsubscribe(subscription_id: uuid.UUID, notifier: Notify) -> None:
    await notifier.unsubscribe(subscription_id)


# --- a tenant's own notification settings -------------------------------------------------------------

TenantChannel = Literal["app", "sms", "email"]
_SETTINGS_EXAMPLE: dict[str, Any] = {
    "low_balance": True,
    "alarms": True,
    "statements": True,
    "channels": ["app", "sms"],
    "quiet_hours": "22:00-07:00",
}


class NotificationSettingsIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{**_SETTINGS_EXAMPLE, "phone": "13800000000", "expected_version": 3}]},
    )

    low_balance: bool = Field(default=True, description="balance_low and balance_exhausted")
    alarms: bool = Field(default=True, description="water_leak, usage_spike, electric_leakage, overload")
    statements: bool = Field(default=True, description="monthly statements (kept here; alarm sends none)")
    channels: list[TenantChannel] = Field(
        default_factory=lambda: list[TenantChannel](["app"]),
        max_length=4,
        description="app (push), sms, email",
    )
    quiet_hours: str | None = Field(default=None, pattern=QUIET.pattern, description="local HH:MM-HH:MM")
    phone: str | None = Field(
        default=None, max_length=30, pattern=_PRINTABLE, description="for sms: the phone of billing's tenant record"
    )
    email: str | None = Field(default=None, max_length=200, pattern=_PRINTABLE, description="for email")
    expected_version: int | None = Field(
        default=None, ge=0, description="the version you read (0: none saved yet); 409 if it changed since"
    )


class NotificationSettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "T-0101", **_SETTINGS_EXAMPLE, "version": 4}]}
    )

    tenant_id: str
    low_balance: bool
    alarms: bool
    statements: bool
    channels: list[str]
    quiet_hours: str | None
    version: int = Field(description="0 until the tenant saves settings; +1 with every save")
    phone: str | None
    email: str | None
    subscriptions: list[SubscriptionOut] = Field(description="the subscriptions these settings manage")


def _settings_out(saved: Saved) -> dict[str, Any]:
    return {
        "tenant_id": saved.tenant_id,
        **saved.settings.to_json(),
        "version": saved.version,
        "phone": saved.phone,
        "email": saved.email,
        "subscriptions": saved.subscriptions,
    }


@router.get(
    "/tenants/{tenant_id}/notification-settings",
    response_model=NotificationSettingsOut,
    tags=["notifications"],
    summary="租户通知设置 · A tenant's notification settings (defaults until saved)",
)
async def tenant_settings(tenant_id: Identifier, notifier: Notify) -> dict[str, Any]:
    return _settings_out(await notifier.preferences.get(tenant_id))


@router.put(
    "/tenants/{tenant_id}/notification-settings",
    response_model=NotificationSettingsOut,
    tags=["notifications"],
    summary="保存租户通知设置 · Replace a tenant's settings and the subscriptions they manage",
    description="Atomic: the tenant's managed subscriptions become exactly what the settings say. 409 "
    "(`version_conflict`) when `expected_version` is no longer current; 422 when a channel cannot be served "
    "(sms without a phone, email without an address).",
)
async def put_tenant_settings(tenant_id: Identifier, body: NotificationSettingsIn, notifier: Notify) -> dict[str, Any]:
    channels = tuple(dict.fromkeys(body.channels))  # each channel once, in the order given
    settings = TenantSettings(
        low_balance=body.low_balance,
        alarms=body.alarms,
        statements=body.statements,
        channels=channels,
        quiet_hours=body.quiet_hours,
    )
    saved = await notifier.preferences.put(
        tenant_id, settings, phone=body.phone, email=body.email, expected_version=body.expected_version
    )
    return _settings_out(saved)


@router.get(
    "/notifications",
    response_model=list[NotificationOut],
    tags=["notifications"],
    summary="Delivery log: every notification with its attempts",
)
async def notifications(
    notifier: Notify,
    alarm_id: uuid.UUID | None = None,
    subscription_id: uuid.UUID | None = None,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    return await notifier.log(alarm_id, subscription_id, status, limit)


@router.post(
    "/notifications/{notification_id}/retry", status_code=202, tags=["notifications"], summary="Retry a dead letter"
)
async def retry_notification(notification_id: uuid.UUID, notifier: Notify) -> dict[str, str]:
    await notifier.retry(notification_id)
    return {"status": "pending"}


# --- work orders -------------------------------------------------------------------------------------


class WorkOrderNote(BaseModel):
    at: datetime
    author: str
    note: str


class WorkOrderOut(BaseModel):
    work_order_id: uuid.UUID
    alarm_id: uuid.UUID | None = Field(description="the alarm that opened it; null for one opened by hand")
    device_id: str
    fault_type: str
    estate: str | None
    building: str | None
    assignee: str | None
    status: str
    closing_cause: str | None
    opened_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    description: str | None = None
    opened_by: str = "system"
    notes: list[WorkOrderNote] = []


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
        raise ServiceError("nothing to change", code="invalid_request", status_code=422)
    return await orders.update(
        work_order_id,
        by=actor,
        status=body.status,
        assignee=body.assignee,
        note=body.note,
        closing_cause=body.closing_cause,
    )
