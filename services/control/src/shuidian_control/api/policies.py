"""Policies: estate cut-off policies, buildings, 保电 (keep-power) flags, no-cut-off holds and the policy log."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, model_validator

from shuidian_control.adapters.parts import ControlParts
from shuidian_control.api.common import MAX_BATCH, Actor, Parts, Reason, StrictIn
from shuidian_control.domain.policies import ALL_ESTATES, EstateSettings, KeepPowerReason
from shuidian_control.errors import NotFound
from shuidian_shared.contracts.control import KeepPowerOut
from shuidian_shared.messages import CommandKind, Identifier

router = APIRouter()


class EstatePolicyIO(StrictIn):
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
async def get_estate_policy(estate_id: Identifier, control: Parts) -> EstateSettings:
    return await control.store.estate_policy(estate_id)


@router.put("/estates/{estate_id}/policy", status_code=204, summary="Set an estate's cut-off policy")
async def put_estate_policy(estate_id: Identifier, body: EstatePolicyIO, control: Parts, actor: Actor) -> None:
    value = EstateSettings(**body.model_dump())
    await control.admin.put_estate_policy(estate_id, value, actor)


class BuildingIn(StrictIn):
    estate_id: Identifier | None = None
    meters: list[Identifier] = Field(max_length=MAX_BATCH)


class BuildingOut(BaseModel):
    building_id: str
    estate_id: str | None
    meters: list[str]
    updated_by: str
    updated_at: datetime


@router.put("/buildings/{building_id}", status_code=204, summary="Register a building's meters (replaces the list)")
async def put_building(building_id: Identifier, body: BuildingIn, control: Parts, actor: Actor) -> None:
    await control.admin.put_building(building_id, body.estate_id, body.meters, actor)


@router.get("/buildings/{building_id}", response_model=BuildingOut, summary="A building's registered meters")
async def get_building(building_id: Identifier, control: Parts) -> dict[str, Any]:
    return await control.store.building(building_id)


class KeepPowerIn(StrictIn):
    reason: KeepPowerReason
    note: str = Field(default="", max_length=500)


@router.get("/keep-power", response_model=list[KeepPowerOut], summary="保电 flags in force")
async def list_keep_power(control: Parts) -> list[dict[str, Any]]:
    return await control.store.keep_power()


async def _clear_keep_power(control: ControlParts, scope: str, subject: str, reason: str, actor: str) -> None:
    if not await control.admin.clear_keep_power(scope, subject, reason, actor):
        raise NotFound(f"无保电记录 · no keep-power on {scope} {subject}")


@router.get(
    "/keep-power/households/{account_id}", response_model=KeepPowerOut, summary="A household's 保电 (404: none)"
)
async def get_household_keep_power(account_id: Identifier, control: Parts) -> dict[str, Any]:
    for flag in await control.store.keep_power():
        if flag["scope"] == "household" and flag["subject"] == account_id:
            return flag
    raise NotFound(f"无保电记录 · no keep-power on household {account_id}")


@router.put("/keep-power/households/{account_id}", status_code=204, summary="Set household 保电 (supply stays on)")
async def set_household_keep_power(account_id: Identifier, body: KeepPowerIn, control: Parts, actor: Actor) -> None:
    await control.admin.set_keep_power("household", account_id, body.reason, body.note, actor)


@router.delete("/keep-power/households/{account_id}", status_code=204, summary="Lift household 保电")
async def clear_household_keep_power(
    account_id: Identifier, control: Parts, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    await _clear_keep_power(control, "household", account_id, reason, actor)


@router.put("/keep-power/estates/{estate_id}", status_code=204, summary="Set estate-wide 保电")
async def set_estate_keep_power(estate_id: Identifier, body: KeepPowerIn, control: Parts, actor: Actor) -> None:
    await control.admin.set_keep_power("estate", estate_id, body.reason, body.note, actor)


@router.delete("/keep-power/estates/{estate_id}", status_code=204, summary="Lift estate-wide 保电")
async def clear_estate_keep_power(
    estate_id: Identifier, control: Parts, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    await _clear_keep_power(control, "estate", estate_id, reason, actor)


class HoldIn(StrictIn):
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
async def list_holds(control: Parts) -> list[dict[str, Any]]:
    return await control.store.holds()


@router.put("/holds/{estate_id}", status_code=204, summary="No cut-off in an estate (`all`: everywhere)")
async def set_hold(estate_id: Identifier, body: HoldIn, control: Parts, actor: Actor) -> None:
    await control.admin.set_hold(_hold_key(estate_id), body.reason, body.until, actor)


@router.delete("/holds/{estate_id}", status_code=204, summary="Lift a no-cut-off switch; deferred trips re-evaluate")
async def clear_hold(
    estate_id: Identifier, control: Parts, actor: Actor, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> None:
    if not await control.admin.clear_hold(_hold_key(estate_id), reason, actor):
        raise NotFound(f"无停断开关 · no hold on {estate_id}")


class PolicyLogOut(BaseModel):
    id: int
    subject: str
    action: str
    detail: str
    actor: str
    at: datetime


@router.get("/policy-log", response_model=list[PolicyLogOut], summary="Who changed which policy, newest first")
async def policy_log(
    control: Parts, subject: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await control.store.policy_log(subject, limit)
