"""Commands (issue, cancel, query with their audit trail), batches with preview, shadows and deferred trips."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, model_validator

from shuidian_control.adapters.commands import CommandQuery
from shuidian_control.adapters.parts import ControlParts
from shuidian_control.api.common import MAX_BATCH, Actor, Parts, Reason, StrictIn
from shuidian_control.domain.operations import MeterOutcome, OperatorRequest, Outcome
from shuidian_control.errors import ControlError, NotFound
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandState, Identifier

router = APIRouter()


class CommandIn(StrictIn):
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


class CancelIn(StrictIn):
    reason: Reason


@router.post("/commands", status_code=202, response_model=Accepted, summary="Issue a device command")
async def issue(body: CommandIn, control: Parts, actor: Actor) -> dict[str, Any]:
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
async def get_command(command_id: uuid.UUID, control: Parts) -> dict[str, Any]:
    return await control.ledger.command(command_id)


@router.post("/commands/{command_id}/cancel", response_model=CommandOut, summary="Cancel an open command")
async def cancel(command_id: uuid.UUID, body: CancelIn, control: Parts, actor: Actor) -> dict[str, Any]:
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
    control: Parts,
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
        meter_ids = tuple(await control.store.building_members(building_id))
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


class BatchIn(StrictIn):
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


async def _batch(body: BatchIn, control: ControlParts, actor: str, *, preview: bool) -> dict[str, Any]:
    meters = set(body.meters)
    if body.building_id is not None:
        members = await control.store.building_members(body.building_id)
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
async def preview_batch(body: BatchIn, control: Parts, actor: Actor) -> dict[str, Any]:
    return await _batch(body, control, actor, preview=True)


@router.post("/batches", status_code=202, response_model=BatchOut, summary="Command a list of meters or a building")
async def run_batch(body: BatchIn, control: Parts, actor: Actor) -> dict[str, Any]:
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
async def shadow(meter_id: Identifier, control: Parts) -> dict[str, Any]:
    view = await control.automation.shadow(meter_id)
    if view is None:
        raise NotFound(f"无影子记录 · no shadow for meter {meter_id}")
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
    control: Parts, limit: Annotated[int, Query(ge=1, le=1000)] = 100, meter_id: Identifier | None = None
) -> list[dict[str, Any]]:
    return await control.automation.deferrals(meter_id, limit)
