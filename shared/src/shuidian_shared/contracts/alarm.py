"""Alarm's side of the gateway contract."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class AttemptOut(BaseModel):
    """One try to deliver a notification."""

    attempt: int
    at: datetime
    ok: bool
    status_code: int | None
    detail: str


class NotificationOut(BaseModel):
    """An alarm notification with its delivery attempts."""

    notification_id: uuid.UUID
    alarm_id: uuid.UUID
    subscription_id: uuid.UUID
    event: str
    channel: str
    address: str
    subject: str
    body: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]
