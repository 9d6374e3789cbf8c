"""Control's HTTP API: commands (issue, batch with preview, cancel, query, audit trail), shadows, policies
(estates, buildings, keep-power, no-cut-off holds), deferred trips and scheduled operations.

Who acts is the subject of the request's verified service token (the api-gateway signs it for the
authenticated user; an `X-Actor` header or a body field is never trusted); every change that can cut or keep
supply also takes a reason, and both land in the audit trail.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_control.automation import MeterOutcome, OperatorRequest, Outcome
from shuidian_control.commands import CommandQuery, ControlError
from shuidian_control.decisions import KeepPowerReason
from shuidian_control.policies import ALL_ESTATES, EstateSettings
from shuidian_control.schedules import ScheduleSpec
from shuidian_control.service import Control
from shuidian_kit.service_auth import Acting
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandState, Identifier

router = APIRouter(prefix="/v1", tags=["control"])
MAX_BATCH = 5000


def _control(request: Request) -> Control:
    control: Control = request.app.state.control
    return control


Service = Annotated[Control, Depends(_control)]
Actor = Acting
Reason = Annotated[str, Field(min_length=1, max_length=500)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- commands -------------------------------------------------------------------------------------------------------


class CommandIn(_In):
    command_id: uuid.UUID | None = Field(
        default=None, description="client-chosen id; a retry with the same id is a no-op"
    )
    meter_id: Identifier
    kind: CommandKind
    reason: Reason
    origin: CommandOrigin = CommandOrigin.OPERATOR
    ttl_seconds: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    parameters: dict[str, str] = Field(default_factory=dict, max_length=32)
    override_windows: bool = Field(default=False, description="cut off inside a protected window (reason on record)")
    lift_keep_power: bool = Field(default=False, description="clear the household's 保电 flag to trip it")


class CommandEventOut(BaseModel):
    state: str
    detail: str
    at: datetime
    attempt: int | None = None
    actor: str = "system"
    request_frame: str | None = None
    response_frame: str | None = None


class CommandOut(BaseModel):
    command_id: uuid.UUID
    meter_id: str
    kind: str
    state: str
    origin: str
    reason: str
    actor: str
    account_id: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    detail: str
    request_frame: str | None
    response_frame: str | None
    attempt: int
    next_attempt_at: datetime | None
    parameters: dict[str, str]
    shadow_version: int | None
    batch_id: uuid.UUID | None
    events: list[CommandEventOut] = []


class Accepted(BaseModel):
    command_id: uuid.UUID


class CancelIn(_In):
    reason: Reason


@router.post("/commands", status_code=202, response_model=Accepted, summary="Issue a device command")
async def issue(body: CommandIn, control: Service, actor: Actor) -> dict[str, Any]:
    request = OperatorRequest(
        kind=body.kind,
        reason=body.reason,
        actor=actor,
        origin=body.origin,
        override_windows=body.override_windows,
        lift_keep_power=body.lift_keep_power,
        parameters=body.parameters,
        ttl=timedelta(seconds=body.ttl_seconds),
        command_id=body.command_id,
    )
    _, (outcome,) = await control.automation.operate([body.meter_id], request)
    if outcome.command_id is None:
        raise ControlError(
            f"指令未下发 · not issued: {outcome.detail}",
            code="command_blocked" if outcome.outcome is Outcome.BLOCKED else "nothing_to_do",
            status_code=409,
        )
    return {"command_id": outcome.command_id}


@router.get("/commands/{command_id}", response_model=CommandOut, summary="A command with its audit trail")
async def get_command(command_id: uuid.UUID, control: Service) -> dict[str, Any]:
    return await control.ledger.command(command_id)


@router.post("/commands/{command_id}/cancel", response_model=CommandOut, summary="Cancel an open command")
async def cancel(command_id: uuid.UUID, body: CancelIn, control: Service, actor: Actor) -> dict[str, Any]:
    return await control.ledger.cancel(command_id, body.reason, actor)


def _cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['command_id']}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, command_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(command_id)
    except ValueError as err:
        raise ControlError("游标无效 · invalid cursor", code="invalid_cursor", status_code=400) from err


@router.get(
    "/commands",
    response_model=list[CommandOut],
    summary="Commands, newest first; the next page's cursor is in the X-Next-Cursor header",
)
async def list_commands(
    control: Service,
    response: Response,
    meter_id: Identifier | None = None,
    building_id: Identifier | None = None,
    state: CommandState | None = None,
    origin: CommandOrigin | None = None,
    kind: CommandKind | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ControlError(f"{name} 需带时区 · {name} needs a timezone offset", code="naive_datetime")
    meter_ids = None
    if building_id is not None:
        async with control.engine.connect() as conn:
            meter_ids = tuple(await control.store.building_meters(conn, building_id))
    query = CommandQuery(
        meter_id=meter_id,
        meter_ids=meter_ids,
        state=state,
        origin=origin,
        kind=kind,
        since=since,
        until=until,
        before=_parse_cursor(cursor) if cursor else None,
        limit=limit,
    )
    rows = await control.ledger.commands(query)
    if len(rows) == limit:
        response.headers["X-Next-Cursor"] = _cursor(rows[-1])
    return rows


# --- batches --------------------------------------------------------------------------------------------------------


class BatchIn(_In):
    meters: list[Identifier] = Field(default_factory=list, max_length=MAX_BATCH)
    building_id: Identifier | None = None
    kind: CommandKind
    reason: Reason
    ttl_seconds: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    parameters: dict[str, str] = Field(default_factory=dict, max_length=32)
    override_windows: bool = False
    lift_keep_power: bool = False

    @model_validator(mode="after")
    def _targets(self) -> BatchIn:
        if not self.meters and self.building_id is None:
            raise ValueError("give meters, a building_id, or both")
        return self


class MeterOutcomeOut(BaseModel):
    meter_id: str
    outcome: str
    detail: str
    kind: str | None
    command_id: uuid.UUID | None


class BatchOut(BaseModel):
    batch_id: uuid.UUID | None
    preview: bool
    counts: dict[str, int]
    meters: list[MeterOutcomeOut]


async def _batch(body: BatchIn, control: Service, actor: str, *, preview: bool) -> dict[str, Any]:
    meters = set(body.meters)
    if body.building_id is not None:
        async with control.engine.connect() as conn:
            members = await control.store.building_meters(conn, body.building_id)
        if not members:
            raise ControlError(
                f"楼栋无表计 · building {body.building_id} has no registered meters", code="empty_building"
            )
        meters |= set(members)
    if len(meters) > MAX_BATCH:
        raise ControlError(f"批量上限 {MAX_BATCH} · at most {MAX_BATCH} meters per batch", code="batch_too_large")
    request = OperatorRequest(
        kind=body.kind,
        reason=body.reason,
        actor=actor,
        override_windows=body.override_windows,
        lift_keep_power=body.lift_keep_power,
        parameters=body.parameters,
        ttl=timedelta(seconds=body.ttl_seconds),
    )
    batch_id, outcomes = await control.automation.operate(sorted(meters), request, preview=preview)
    return _batch_out(None if preview else batch_id, preview, outcomes)


def _batch_out(batch_id: uuid.UUID | None, preview: bool, outcomes: list[MeterOutcome]) -> dict[str, Any]:
    counts = {o.value: 0 for o in Outcome}
    for outcome in outcomes:
        counts[outcome.outcome.value] += 1
    return {"batch_id": batch_id, "preview": preview, "counts": counts, "meters": [o.as_dict() for o in outcomes]}


@router.post("/batches/preview", response_model=BatchOut, summary="Which meters a batch would command or find blocked")
async def preview_batch(body: BatchIn, control: Service, actor: Actor) -> dict[str, Any]:
    return await _batch(body, control, actor, preview=True)


@router.post("/batches", status_code=202, response_model=BatchOut, summary="Command a list of meters or a building")
async def run_batch(body: BatchIn, control: Service, actor: Actor) -> dict[str, Any]:
    return await _batch(body, control, actor, preview=False)


# --- shadows and deferrals ------------------------------------------------------------------------------------------


class ShadowOut(BaseModel):
    meter_id: str
    utility: str
    desired_supply: str | None
    reported_supply: str | None
    desired_relay: str | None
    reported_relay: str | None
    desired_valve: str | None
    reported_valve: str | None
    desired_keep_power: bool | None = Field(default=None, description="the meter's own keep-power mode, as intended")
    reported_keep_power: bool | None = Field(default=None, description="the meter's keep-power mode, as reported")
    version: int
    online: bool | None
    gateway_id: str | None
    account_id: str | None
    reported_at: datetime | None
    updated_at: datetime


@router.get("/meters/{meter_id}/shadow", response_model=ShadowOut, summary="Desired vs reported supply, versioned")
async def shadow(meter_id: Identifier, control: Service) -> dict[str, Any]:
    view = await control.automation.shadow(meter_id)
    if view is None:
        raise ControlError(f"无影子记录 · no shadow for meter {meter_id}", code="not_found", status_code=404)
    return view


class DeferralOut(BaseModel):
    meter_id: str
    account_id: str | None
    due_at: datetime | None
    reason: str
    created_at: datetime
    updated_at: datetime


@router.get("/deferrals", response_model=list[DeferralOut], summary="Trips waiting for a protected window to end")
async def deferrals(
    control: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 100, meter_id: Identifier | None = None
) -> list[dict[str, Any]]:
    return await control.automation.deferrals(meter_id, limit)


# --- policies -------------------------------------------------------------------------------------------------------


class EstatePolicyIO(_In):
    nights_start: time | None = Field(default=time(22), description="local time; null with nights_end: no night window")
    nights_end: time | None = time(7)
    weekends: bool = True
    holidays: bool = Field(default=True, description="statutory holidays; dates the calendar does not know count too")
    restore: CommandKind = CommandKind.DIRECT_CLOSE
    prepaid_water: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> EstatePolicyIO:
        if (self.nights_start is None) != (self.nights_end is None):
            raise ValueError("nights_start and nights_end are both set or both null")
        if self.nights_start is not None and self.nights_start == self.nights_end:
            raise ValueError("the night window needs start != end")
        if self.restore not in (CommandKind.DIRECT_CLOSE, CommandKind.CLOSE_ALLOWED):
            raise ValueError("restore is direct_close or close_allowed")
        for name in ("nights_start", "nights_end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is not None:
                raise ValueError(f"{name} is a local wall-clock time, without offset")
        return self


@router.get("/estates/{estate_id}/policy", response_model=EstatePolicyIO, summary="An estate's cut-off policy")
async def get_estate_policy(estate_id: Identifier, control: Service) -> EstateSettings:
    return await control.store.estate_policy(estate_id)


@router.put("/estates/{estate_id}/policy", status_code=204, summary="Set an estate's cut-off policy")
async def put_estate_policy(estate_id: Identifier, body: EstatePolicyIO, control: Service, actor: Actor) -> None:
    value = EstateSettings(**body.model_dump())
    async with control.engine.begin() as conn:
        await control.store.put_estate_policy(conn, estate_id, value, actor)
        await control.automation.policy_changed(conn)


class BuildingIn(_In):
    estate_id: Identifier | None = None
    meters: list[Identifier] = Field(max_length=MAX_BATCH)


class BuildingOut(BaseModel):
    building_id: str
    estate_id: str | None
    meters: list[str]
    updated_by: str
    updated_at: datetime


@router.put("/buildings/{building_id}", status_code=204, summary="Register a building's meters (replaces the list)")
async def put_building(building_id: Identifier, body: BuildingIn, control: Service, actor: Actor) -> None:
    async with control.engine.begin() as conn:
        await control.store.put_building(conn, building_id, body.estate_id, body.meters, actor)
        await control.automation.policy_changed(conn)
        # The estate's 保电 may differ: the meters' own keep-power modes follow it.
        await control.automation.sync_keep_power_modes(conn, body.meters, actor)
    control.automation.notify()


@router.get("/buildings/{building_id}", response_model=BuildingOut, summary="A building's registered meters")
async def get_building(building_id: Identifier, control: Service) -> dict[str, Any]:
    return await control.store.building(building_id)


class KeepPowerIn(_In):
    reason: KeepPowerReason
    note: str = Field(default="", max_length=500)


class KeepPowerOut(BaseModel):
    scope: str
    subject: str
    reason: str
    note: str
    set_by: str
    set_at: datetime


@router.get("/keep-power", response_model=list[KeepPowerOut], summary="保电 flags in force")
async def list_keep_power(control: Service) -> list[dict[str, Any]]:
    return await control.store.keep_power()


async def _set_keep_power(control: Control, scope: str, subject: str, body: KeepPowerIn, actor: str) -> None:
    async with control.engine.begin() as conn:
        await control.store.set_keep_power(conn, scope, subject, body.reason, body.note, actor)
        await control.automation.keep_power_changed(conn, await _subject_meters(control, conn, scope, subject), actor)
    control.automation.notify()


async def _clear_keep_power(control: Control, scope: str, subject: str, reason: str, actor: str) -> None:
    async with control.engine.begin() as conn:
        if not await control.store.clear_keep_power(conn, scope, subject, reason, actor):
            raise ControlError(f"无保电记录 · no keep-power on {scope} {subject}", code="not_found", status_code=404)
        await control.automation.keep_power_changed(conn, await _subject_meters(control, conn, scope, subject), actor)
    control.automation.notify()


async def _subject_meters(control: Control, conn: AsyncConnection, scope: str, subject: str) -> list[str]:
    if scope == "household":
        return await control.automation.household_meters(conn, subject)
    return await control.automation.estate_meters(conn, subject)


@router.get(
    "/keep-power/households/{account_id}", response_model=KeepPowerOut, summary="A household's 保电 (404: none)"
)
async def get_household_keep_power(account_id: Identifier, control: Service) -> dict[str, Any]:
    for flag in await control.store.keep_power():
        if flag["scope"] == "household" and flag["subject"] == account_id:
            return flag
    raise ControlError(f"无保电记录 · no keep-power on household {account_id}", code="not_found", status_code=404)


@router.put("/keep-power/households/{account_id}", status_code=204, summary="Set household 保电 (supply stays on)")
async def set_household_keep_power(account_id: Identifier, body: KeepPowerIn, control: Service, actor: Actor) -> None:
    await _set_keep_power(control, "household", account_id, body, actor)


@router.delete("/keep-power/households/{account_id}", status_code=204, summary="Lift household 保电")
async def clear_household_keep_power(
    account_id: Identifier, control: Service, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    await _clear_keep_power(control, "household", account_id, reason, actor)


@router.put("/keep-power/estates/{estate_id}", status_code=204, summary="Set estate-wide 保电")
async def set_estate_keep_power(estate_id: Identifier, body: KeepPowerIn, control: Service, actor: Actor) -> None:
    await _set_keep_power(control, "estate", estate_id, body, actor)


@router.delete("/keep-power/estates/{estate_id}", status_code=204, summary="Lift estate-wide 保电")
async def clear_estate_keep_power(
    estate_id: Identifier, control: Service, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    await _clear_keep_power(control, "estate", estate_id, reason, actor)


class HoldIn(_In):
    reason: Reason
    until: datetime | None = Field(default=None, description="aware instant; null: until lifted")

    @model_validator(mode="after")
    def _aware(self) -> HoldIn:
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until needs a timezone offset")
        return self


class HoldOut(BaseModel):
    estate_id: str
    reason: str
    until: datetime | None
    set_by: str
    set_at: datetime


def _hold_key(estate_id: str) -> str:
    return ALL_ESTATES if estate_id == "all" else estate_id


@router.get("/holds", response_model=list[HoldOut], summary="Operator no-cut-off switches in force")
async def list_holds(control: Service) -> list[dict[str, Any]]:
    return await control.store.holds()


@router.put("/holds/{estate_id}", status_code=204, summary="No cut-off in an estate (`all`: everywhere)")
async def set_hold(estate_id: Identifier, body: HoldIn, control: Service, actor: Actor) -> None:
    async with control.engine.begin() as conn:
        await control.store.set_hold(conn, _hold_key(estate_id), body.reason, body.until, actor)
        await control.automation.policy_changed(conn)


@router.delete("/holds/{estate_id}", status_code=204, summary="Lift a no-cut-off switch; deferred trips re-evaluate")
async def clear_hold(
    estate_id: Identifier, control: Service, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    async with control.engine.begin() as conn:
        if not await control.store.clear_hold(conn, _hold_key(estate_id), reason, actor):
            raise ControlError(f"无停断开关 · no hold on {estate_id}", code="not_found", status_code=404)
        await control.automation.policy_changed(conn)


class PolicyLogOut(BaseModel):
    id: int
    subject: str
    action: str
    detail: str
    actor: str
    at: datetime


@router.get("/policy-log", response_model=list[PolicyLogOut], summary="Who changed which policy, newest first")
async def policy_log(
    control: Service, subject: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await control.store.policy_log(subject, limit)


# --- holiday calendar -----------------------------------------------------------------------------------------------

_EXAMPLE_2027: dict[str, Any] = {
    "holidays": ["2027-01-01", "2027-02-06", "2027-02-07", "2027-02-08"],
    "adjusted_workdays": ["2027-02-13"],
    "notice": "国务院办公厅关于2027年部分节假日安排的通知",
}


class CalendarYearIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_2027]})

    holidays: list[date] = Field(max_length=366, description="statutory rest days, in-lieu days included")
    adjusted_workdays: list[date] = Field(
        default_factory=list, max_length=366, description="调休: weekend days worked to bridge a holiday"
    )
    notice: str = Field(min_length=1, max_length=500, description="the State Council notice the dates come from")


class CalendarYearOut(BaseModel):
    year: int
    holidays: list[date]
    adjusted_workdays: list[date]
    notice: str
    published_by: str
    published_at: datetime


class CalendarCoverageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "today": "2026-12-06",
                    "last_year": 2026,
                    "published_years": [],
                    "next_year_covered": False,
                    "warning": "节假日日历缺少 2027 年安排 · the holiday calendar does not cover 2027: …",
                }
            ]
        }
    )

    today: date = Field(description="local date the coverage is reported for")
    last_year: int | None = Field(description="last year covered from this one on (None: not even this year)")
    published_years: list[int] = Field(description="years published by the operator (they win over the library)")
    next_year_covered: bool
    warning: str | None = Field(description="set while this year, or from 1 December the next, is not covered")


CalendarYear = Annotated[int, Path(ge=2000, le=2200, description="calendar year")]


@router.get("/calendar", response_model=CalendarCoverageOut, summary="Holiday calendar coverage and warnings")
async def calendar_coverage(control: Service) -> dict[str, Any]:
    return asdict(control.check_calendar())


@router.get("/calendar/{year}", response_model=CalendarYearOut, summary="A year's published holiday arrangement")
async def calendar_year(year: CalendarYear, control: Service) -> dict[str, Any]:
    published = await control.calendar.year(year)
    if published is None:
        raise ControlError(
            f"未发布 {year} 年节假日安排 · no arrangement published for {year} (the library's data applies)",
            code="not_found",
            status_code=404,
        )
    return asdict(published)


@router.put(
    "/calendar/{year}",
    response_model=CalendarYearOut,
    summary="Publish a year's holiday arrangement (State Council notice); it wins over the library for that year",
)
async def publish_calendar_year(
    year: CalendarYear, body: CalendarYearIn, control: Service, actor: Actor
) -> dict[str, Any]:
    async with control.engine.begin() as conn:
        try:
            await control.calendar.publish(conn, year, body.holidays, body.adjusted_workdays, body.notice, actor)
        except ValueError as err:
            raise ControlError(
                f"节假日安排无效 · invalid arrangement for {year}: {err}", code="invalid_calendar"
            ) from err
        await control.automation.policy_changed(conn)  # deferred trips re-evaluate against the new dates
    await control.calendar.load()
    return await calendar_year(year, control)


# --- schedules ------------------------------------------------------------------------------------------------------


class ScheduleIn(_In):
    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    kind: CommandKind
    at_local: time | None = Field(default=None, description="daily, local wall-clock time (Asia/Shanghai)")
    run_at: datetime | None = Field(default=None, description="once, at this aware instant")
    building_id: Identifier | None = None
    meters: list[Identifier] = Field(default_factory=list, max_length=MAX_BATCH)
    meter_id: Identifier | None = Field(default=None, description="one meter (added to `meters`)")
    parameters: dict[str, str] = Field(default_factory=dict, max_length=32)
    reason: str = Field(default="", max_length=500)
    ttl_seconds: int | None = Field(default=None, ge=10, le=7 * 24 * 3600)
    command_id: uuid.UUID | None = Field(
        default=None, description="a one-shot's command id; creating it again with the same id is a no-op"
    )
    origin: CommandOrigin = Field(default=CommandOrigin.OPERATOR, description="who asked (runs as `schedule`)")

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleIn:
        if not self.meters and self.meter_id is None and self.building_id is None:
            raise ValueError("give meter_id, meters, a building_id, or several")
        if (self.at_local is None) == (self.run_at is None):
            raise ValueError("give at_local (daily) or run_at (once)")
        if self.at_local is not None and self.at_local.tzinfo is not None:
            raise ValueError("at_local is a local wall-clock time, without offset")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at needs a timezone offset")
        if self.command_id is not None and self.run_at is None:
            raise ValueError("command_id is for one-shot (run_at) schedules")
        return self


class ScheduleOut(BaseModel):
    schedule_id: uuid.UUID
    name: str
    kind: str
    at_local: time | None
    run_at: datetime | None
    building_id: str | None
    meters: list[str]
    parameters: dict[str, str]
    reason: str
    ttl_seconds: int | None
    command_id: uuid.UUID | None
    enabled: bool
    last_occurrence: datetime | None
    created_by: str
    created_at: datetime


@router.post(
    "/schedules", status_code=201, response_model=ScheduleOut, summary="A daily (e.g. load limits) or one-off operation"
)
async def create_schedule(body: ScheduleIn, control: Service, actor: Actor) -> dict[str, Any]:
    meters = (*body.meters, body.meter_id) if body.meter_id else tuple(body.meters)
    spec = ScheduleSpec(
        name=body.name or f"{body.kind.value} {body.meter_id or body.building_id or 'meters'}",
        kind=body.kind,
        building_id=body.building_id,
        meters=meters,
        parameters=body.parameters,
        reason=body.reason,
        ttl_seconds=body.ttl_seconds,
        at_local=body.at_local,
        run_at=body.run_at,
        command_id=body.command_id,
    )
    return await control.scheduler.create(spec, actor)


@router.get("/schedules", response_model=list[ScheduleOut], summary="Scheduled operations")
async def list_schedules(control: Service) -> list[dict[str, Any]]:
    return await control.scheduler.list()


@router.delete("/schedules/{schedule_id}", status_code=204, summary="Remove a scheduled operation")
async def delete_schedule(schedule_id: uuid.UUID, control: Service, actor: Actor) -> None:
    await control.scheduler.delete(schedule_id, actor)
