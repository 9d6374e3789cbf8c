"""Alarms as the lifecycle knows them: active → acknowledged → cleared, one open alarm per (source, type).

`AlarmRecord` is an alarm as stored, `AlarmQuery` a filter over the history; pages are cut by an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from shuidian_alarm.errors import InvalidQuery
from shuidian_shared.messages import AlarmSeverity, AlarmState


@dataclass(frozen=True, kw_only=True)
class AlarmRecord:
    """An alarm as stored, with where its source sits."""

    alarm_id: uuid.UUID
    source_id: str
    alarm_type: str
    severity: AlarmSeverity
    state: AlarmState
    message_zh: str
    message_en: str
    details: dict[str, str] = field(default_factory=dict)
    meter_id: str | None = None
    gateway_id: str | None = None
    estate: str | None = None
    building: str | None = None
    room: str | None = None
    tenant_id: str | None = None
    occurrences: int = 1
    escalation_level: int = 0
    raised_at: datetime


@dataclass(frozen=True, kw_only=True)
class AlarmQuery:
    estate: str | None = None
    building: str | None = None
    source_id: str | None = None
    meter_id: str | None = None
    alarm_type: str | None = None
    alarm_types: tuple[str, ...] | None = None
    state: str | None = None
    tenant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    cursor: str | None = None


def hook_order(event: tuple[AlarmRecord, str]) -> tuple[bool, str, str, str]:
    """Hooks run in (tenant, source, type) order: the rows they lock are then taken in one order by everyone."""
    record = event[0]
    return (record.tenant_id is not None, record.tenant_id or "", record.source_id, record.alarm_type)


def encode_cursor(raised_at: datetime, alarm_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{raised_at.isoformat()}|{alarm_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, alarm_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), uuid.UUID(alarm_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise InvalidQuery("cursor is not one this API handed out") from err
