"""What every route shares: the problem format, paging and filter parameters, and the typed text a body may hold."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shuidian_shared.messages import AwareDatetime


class Problem(BaseModel):
    """RFC 9457 problem details: the one error format of every service."""

    type: str
    title: str
    status: int
    detail: str
    code: str


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {"application/problem+json": {}}}


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _problem("the body is not JSON"),
    404: _problem("no such object"),
    409: _problem("the change is not allowed in the object's current state"),
    422: _problem("the request did not validate"),
}


Limit = Annotated[int, Query(ge=1, le=1000)]
NEXT_CURSOR = "X-Next-Cursor"
# Names and filters are printable text: PostgreSQL refuses NUL, and control characters are never meant.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)]
Text = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[^\x00]*$")]
Filter = Annotated[str | None, Query(min_length=1, max_length=100, pattern=PRINTABLE)]
Cursor = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")]


def _iso_only(value: Any) -> Any:
    # pydantic would read a bare number as a Unix time; an API filter takes ISO 8601 with an offset only.
    if not isinstance(value, datetime) and not (isinstance(value, str) and "T" in value):
        raise ValueError("expected an ISO 8601 date-time with an offset, e.g. 2026-03-01T08:00:00+08:00")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_only)]


def _hh_mm(value: Any) -> Any:
    return value.strftime("%H:%M") if isinstance(value, time) else value


# Quiet hours are local wall-clock times (ALARM_TIMEZONE), not instants: "HH:MM", no offset.
LocalTime = Annotated[
    str, BeforeValidator(_hh_mm), Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["22:00"])
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
