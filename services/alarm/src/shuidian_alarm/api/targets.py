"""Where each meter belongs (a copy of billing's and the collector's premises, for scopes and placement)."""

from __future__ import annotations

from typing import Any, Self

from fastapi import APIRouter
from pydantic import Field, model_validator

from shuidian_alarm.api.deps import Engine
from shuidian_alarm.api.schemas import Name, Strict
from shuidian_alarm.domain.targets import Target
from shuidian_shared.messages import Identifier

router = APIRouter()


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
