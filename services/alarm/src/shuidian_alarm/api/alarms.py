"""Alarms and their history; device faults for maintenance staff."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from pydantic import Field, StrictInt

from shuidian_alarm.adapters.alarms import AlarmService
from shuidian_alarm.api.deps import Alarms
from shuidian_alarm.api.schemas import NEXT_CURSOR, PROBLEMS, Cursor, Filter, Instant, Limit, Name, Strict, Text
from shuidian_alarm.domain.alarms import AlarmQuery
from shuidian_alarm.domain.work_orders import FAULT_TYPES
from shuidian_alarm.errors import InvalidQuery
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts.alarm import AlarmActionOut, AlarmOut

router = APIRouter()


async def _page(alarms: AlarmService, response: Response, query: AlarmQuery) -> list[dict[str, Any]]:
    """One page of history; the next page's cursor in the `X-Next-Cursor` header when more may follow."""
    found, more = await alarms.query(query)
    if more:
        response.headers[NEXT_CURSOR] = more
    return found


Version = Annotated[
    StrictInt | None,
    Field(
        ge=1,
        description="the alarm's `version` the caller read: 409 (`version_conflict`) when it changed since; "
        "omit to act on whatever the alarm now is",
    ),
]


class AcknowledgeIn(Strict):
    by: Name | None = Field(
        default=None, description="ignored (older clients send it): the acknowledger is the caller's credential"
    )
    expected_version: Version = None


class ResolveIn(Strict):
    reason: Text = Field(description="why the alarm is resolved by hand (kept in its action log)")
    expected_version: Version = None


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
    return await _page(
        alarms,
        response,
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
        ),
    )


@router.get("/alarms/{alarm_id}", response_model=AlarmOut, tags=["alarms"], summary="One alarm")
async def get_alarm(alarm_id: uuid.UUID, alarms: Alarms) -> dict[str, Any]:
    return await alarms.get(alarm_id)


@router.post(
    "/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, tags=["alarms"], summary="确认告警 · Acknowledge"
)
async def acknowledge(
    alarm_id: uuid.UUID, alarms: Alarms, actor: Acting, body: AcknowledgeIn | None = None
) -> dict[str, Any]:
    return await alarms.acknowledge(alarm_id, actor, None if body is None else body.expected_version)


@router.post(
    "/alarms/{alarm_id}/resolve",
    response_model=AlarmOut,
    tags=["alarms"],
    summary="手动处理告警 · Resolve an alarm by hand",
    description="Clears an open alarm with the caller (from the credential) and the reason, kept in the alarm's "
    "action log. 409 `invalid_transition` on an alarm already cleared, `version_conflict` when `expected_version` "
    "is stale. The next occurrence of the same source and type opens a new alarm.",
    responses={k: PROBLEMS[k] for k in (404, 409, 422)},
)
async def resolve(alarm_id: uuid.UUID, body: ResolveIn, alarms: Alarms, actor: Acting) -> dict[str, Any]:
    return await alarms.resolve(alarm_id, actor, body.reason, body.expected_version)


@router.get(
    "/alarms/{alarm_id}/actions",
    response_model=list[AlarmActionOut],
    tags=["alarms"],
    summary="告警操作记录 · Who acknowledged or resolved an alarm, and why",
)
async def actions(alarm_id: uuid.UUID, alarms: Alarms) -> list[dict[str, Any]]:
    await alarms.get(alarm_id)  # 404 for an alarm that does not exist, not an empty log
    return await alarms.actions(alarm_id)


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
    return await _page(
        alarms,
        response,
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
        ),
    )
