"""Control's side of the gateway contract: keep-power, commands and their shadows, batches and schedules, an
estate's policy and the holiday calendar (as control's `api/*.py` writes them)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time

from pydantic import BaseModel, Field


class KeepPowerOut(BaseModel):
    """A 保电 flag in force."""

    scope: str
    subject: str
    reason: str
    note: str
    set_by: str
    set_at: datetime


class CommandEventOut(BaseModel):
    state: str
    detail: str
    at: datetime
    attempt: int | None = None
    actor: str = "system"
    request_frame: str | None = None
    response_frame: str | None = None


class CommandOut(BaseModel):
    """A device command with its history."""

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


class ShadowOut(BaseModel):
    """A meter's desired and reported supply state."""

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


class MeterOutcomeOut(BaseModel):
    meter_id: str
    outcome: str
    detail: str
    kind: str | None
    command_id: uuid.UUID | None


class BatchOut(BaseModel):
    """A batch (or its preview): what control decided for each meter."""

    batch_id: uuid.UUID | None
    preview: bool
    counts: dict[str, int]
    meters: list[MeterOutcomeOut]


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


class EstatePolicyOut(BaseModel):
    """An estate's supply policy: protected windows (nights, weekends, holidays), how supply is restored."""

    nights_start: time | None = Field(default=time(22), description="local time; null with nights_end: no night window")
    nights_end: time | None = time(7)
    weekends: bool = True
    holidays: bool = Field(default=True, description="statutory holidays; dates the calendar does not know count too")
    restore: str = Field(default="direct_close", description="direct_close or close_allowed")
    prepaid_water: bool = False


class CalendarCoverageOut(BaseModel):
    today: date = Field(description="local date the coverage is reported for")
    last_year: int | None = Field(description="last year covered from this one on (None: not even this year)")
    published_years: list[int] = Field(description="years published by the operator (they win over the library)")
    next_year_covered: bool
    warning: str | None = Field(description="set while this year, or from 1 December the next, is not covered")


class CalendarYearOut(BaseModel):
    year: int
    holidays: list[date]
    adjusted_workdays: list[date]
    notice: str
    published_by: str
    published_at: datetime
