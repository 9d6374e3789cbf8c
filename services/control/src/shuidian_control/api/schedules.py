"""Scheduled operations: daily at a local time (e.g. load limits) or once at an instant."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from shuidian_control.api.common import MAX_BATCH, Actor, Parts, StrictIn
from shuidian_control.domain.schedules import ScheduleSpec
from shuidian_shared.messages import CommandKind, CommandOrigin, Identifier

router = APIRouter()


class ScheduleIn(StrictIn):
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
async def create_schedule(body: ScheduleIn, control: Parts, actor: Actor) -> dict[str, Any]:
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
async def list_schedules(control: Parts) -> list[dict[str, Any]]:
    return await control.scheduler.list()


@router.delete("/schedules/{schedule_id}", status_code=204, summary="Remove a scheduled operation")
async def delete_schedule(schedule_id: uuid.UUID, control: Parts, actor: Actor) -> None:
    await control.scheduler.delete(schedule_id, actor)
