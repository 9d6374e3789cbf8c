"""Control's side of the gateway contract."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class KeepPowerOut(BaseModel):
    """A 保电 flag in force."""

    scope: str
    subject: str
    reason: str
    note: str
    set_by: str
    set_at: datetime
