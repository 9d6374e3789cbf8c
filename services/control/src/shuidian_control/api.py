"""Control's HTTP API: commands (issue, query, audit trail) and per-meter relay shadows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shuidian_control.commands import CommandService
from shuidian_shared.messages import CommandKind, CommandOrigin, Identifier

router = APIRouter(prefix="/v1", tags=["control"])


def _service(request: Request) -> CommandService:
    service: CommandService = request.app.state.commands
    return service


Commands = Annotated[CommandService, Depends(_service)]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command_id: uuid.UUID | None = Field(
        default=None, description="client-chosen id; a retry with the same id is a no-op"
    )
    meter_id: Identifier
    kind: CommandKind
    reason: str = Field(min_length=1, max_length=500)
    origin: CommandOrigin = CommandOrigin.OPERATOR
    ttl_seconds: int = Field(default=600, ge=10, le=7 * 24 * 3600)


class CommandEventOut(BaseModel):
    state: str
    detail: str
    at: datetime


class CommandOut(BaseModel):
    command_id: uuid.UUID
    meter_id: str
    kind: str
    state: str
    origin: str
    reason: str
    account_id: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    detail: str
    request_frame: str | None
    events: list[CommandEventOut] = []


class ShadowOut(BaseModel):
    meter_id: str
    desired_relay: str | None
    reported_relay: str | None
    version: int
    updated_at: datetime


class Accepted(BaseModel):
    command_id: uuid.UUID


@router.post("/commands", status_code=202, response_model=Accepted, summary="Issue a device command")
async def issue(body: CommandIn, commands: Commands) -> dict[str, Any]:
    command_id = await commands.request(
        body.meter_id,
        body.kind,
        origin=body.origin,
        reason=body.reason,
        ttl=timedelta(seconds=body.ttl_seconds),
        command_id=body.command_id,
    )
    return {"command_id": command_id}


@router.get("/commands/{command_id}", response_model=CommandOut, summary="A command with its audit trail")
async def get_command(command_id: uuid.UUID, commands: Commands) -> dict[str, Any]:
    return await commands.command(command_id)


@router.get("/commands", response_model=list[CommandOut], summary="Commands, newest first")
async def list_commands(
    commands: Commands,
    meter_id: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await commands.commands(meter_id, state, limit)


@router.get("/meters/{meter_id}/shadow", response_model=ShadowOut, summary="Desired vs reported relay state")
async def shadow(meter_id: str, commands: Commands) -> dict[str, Any]:
    return await commands.shadow(meter_id)
