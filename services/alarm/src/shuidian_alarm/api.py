"""Alarm's HTTP API: query alarms, acknowledge them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from shuidian_alarm.alarms import AlarmService

router = APIRouter(prefix="/v1", tags=["alarms"])


def _service(request: Request) -> AlarmService:
    service: AlarmService = request.app.state.alarms
    return service


Alarms = Annotated[AlarmService, Depends(_service)]


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
    raised_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None


class AcknowledgeIn(BaseModel):
    by: str = Field(min_length=1, max_length=100)


@router.get("/alarms", response_model=list[AlarmOut], summary="Alarms, newest first")
async def list_alarms(
    alarms: Alarms,
    source_id: str | None = None,
    alarm_type: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await alarms.alarms(source_id, alarm_type, state, limit)


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, summary="Acknowledge an alarm")
async def acknowledge(alarm_id: uuid.UUID, body: AcknowledgeIn, alarms: Alarms) -> dict[str, Any]:
    return await alarms.acknowledge(alarm_id, body.by)
