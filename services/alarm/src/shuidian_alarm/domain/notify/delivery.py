"""Notification delivery: what one notification to send is, what an attempt came to, and what happens next
(retry with back-off, or give up), quiet hours included."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from shuidian_alarm.domain.alarms import AlarmRecord
from shuidian_alarm.domain.notify.preferences import BALANCE_TYPES, SAFETY_TYPES
from shuidian_shared.messages import AlarmSeverity

# What a tenant hears about: their money, their water and their safety; not device housekeeping.
TENANT_ALARM_TYPES: Final = BALANCE_TYPES + SAFETY_TYPES


@dataclass(frozen=True, kw_only=True)
class Outgoing:
    """One notification ready to send."""

    notification_id: uuid.UUID
    channel: str
    address: str
    subject: str
    body: str
    payload: dict[str, Any]
    secret: str | None = None
    tenant_id: str | None = None
    language: str = "zh-CN"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    retryable: bool = False
    status_code: int | None = None
    detail: str = ""


class Channel(Protocol):
    async def send(self, message: Outgoing) -> DeliveryResult: ...


def quiet_until(now: datetime, start: time | None, end: time | None, timezone: str) -> datetime | None:
    """When the quiet period `now` falls in ends (aware), or None outside quiet hours; may span midnight."""
    if start is None or end is None or start == end:
        return None
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= clock < end:
            return None
        day = local.date()
    else:
        if end <= clock < start:
            return None
        day = local.date() + timedelta(days=1) if clock >= start else local.date()
    return datetime.combine(day, end, tzinfo=zone)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 6
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta:
        """Back-off after `attempts` failed attempts: base × 2^(attempts−1), capped."""
        delay: timedelta = self.base * (2 ** (attempts - 1))
        return min(delay, self.cap)


def first_due(
    severity: AlarmSeverity, now: datetime, quiet_start: time | None, quiet_end: time | None, timezone: str
) -> datetime:
    """When a notification may first go: now, or when the subscriber's quiet hours end; critical alarms never wait."""
    if severity is AlarmSeverity.CRITICAL:
        return now
    return quiet_until(now, quiet_start, quiet_end, timezone) or now


def next_attempt(result: DeliveryResult, attempt: int, retry: RetryPolicy, now: datetime) -> tuple[str, datetime, str]:
    """After attempt number `attempt` came to `result`: the notification's status, when it is next due, and the
    outcome to count (delivered; retry later for a retryable failure under the limit; else dead)."""
    if result.ok:
        return "delivered", now, "delivered"
    if result.retryable and attempt < retry.max_attempts:
        return "pending", now + retry.delay(attempt), "retry"
    return "dead", now, "dead"


def alarm_payload(alarm: AlarmRecord, event: str) -> dict[str, Any]:
    """What every channel carries about an alarm event besides its rendered text."""
    return {
        "alarm_id": str(alarm.alarm_id),
        "alarm_type": alarm.alarm_type,
        "event": event,
        "severity": alarm.severity.value,
        "state": alarm.state.value,
        "source_id": alarm.source_id,
        "meter_id": alarm.meter_id,
        "estate": alarm.estate,
        "building": alarm.building,
        "room": alarm.room,
        "message_zh": alarm.message_zh,
        "message_en": alarm.message_en,
        "details": alarm.details,
        "raised_at": alarm.raised_at.isoformat(),
    }
