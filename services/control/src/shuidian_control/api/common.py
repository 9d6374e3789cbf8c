"""What every control router shares: the parts container, the acting user, a reason, strict request bodies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from shuidian_control.adapters.parts import ControlParts
from shuidian_kit.service_auth import Acting

MAX_BATCH = 5000


def _parts(request: Request) -> ControlParts:
    parts: ControlParts = request.app.state.control
    return parts


Parts = Annotated[ControlParts, Depends(_parts)]
Actor = Acting
Reason = Annotated[str, Field(min_length=1, max_length=500)]


class StrictIn(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
