"""The holiday calendar: coverage and warnings, and the years the operator publishes from the State Council notice."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from shuidian_control.api.common import Actor, Parts, StrictIn
from shuidian_control.errors import ControlError, NotFound

router = APIRouter()

_EXAMPLE_2027: dict[str, Any] = {
    "holidays": ["2027-01-01", "2027-02-06", "2027-02-07", "2027-02-08"],
    "adjusted_workdays": ["2027-02-13"],
    "notice": "国务院办公厅关于2027年部分节假日安排的通知",
}


class CalendarYearIn(StrictIn):
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
async def calendar_coverage(control: Parts) -> dict[str, Any]:
    return asdict(control.housekeeping.check_calendar())


@router.get("/calendar/{year}", response_model=CalendarYearOut, summary="A year's published holiday arrangement")
async def calendar_year(year: CalendarYear, control: Parts) -> dict[str, Any]:
    published = await control.calendar.year(year)
    if published is None:
        raise NotFound(f"未发布 {year} 年节假日安排 · no arrangement published for {year} (the library's data applies)")
    return asdict(published)


@router.put(
    "/calendar/{year}",
    response_model=CalendarYearOut,
    summary="Publish a year's holiday arrangement (State Council notice); it wins over the library for that year",
)
async def publish_calendar_year(
    year: CalendarYear, body: CalendarYearIn, control: Parts, actor: Actor
) -> dict[str, Any]:
    try:
        await control.admin.publish_calendar(year, body.holidays, body.adjusted_workdays, body.notice, actor)
    except ValueError as err:
        raise ControlError(f"节假日安排无效 · invalid arrangement for {year}: {err}", code="invalid_calendar") from err
    return await calendar_year(year, control)
