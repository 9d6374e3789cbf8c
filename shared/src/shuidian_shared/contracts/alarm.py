"""Alarm's side of the gateway contract: notifications, alarms, work orders, rules and subscriptions (as alarm's
`api/*.py` writes them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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


class AlarmOut(BaseModel):
    alarm_id: uuid.UUID
    source_id: str
    alarm_type: str
    severity: str
    state: str
    message_zh: str
    message_en: str
    details: dict[str, str]
    occurrences: int
    meter_id: str | None
    gateway_id: str | None
    estate: str | None
    building: str | None
    room: str | None
    tenant_id: str | None
    raised_at: datetime
    last_seen_at: datetime
    updated_at: datetime
    escalation_level: int
    escalated_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None
    version: int = Field(description="bumped by every change; send it back as `expected_version` to act on it")
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class WorkOrderNote(BaseModel):
    at: datetime
    author: str
    note: str


class WorkOrderOut(BaseModel):
    work_order_id: uuid.UUID
    alarm_id: uuid.UUID | None = Field(description="the alarm that opened it; null for one opened by hand")
    device_id: str
    fault_type: str
    estate: str | None
    building: str | None
    assignee: str | None
    status: str
    closing_cause: str | None
    opened_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    description: str | None = None
    opened_by: str = "system"
    notes: list[WorkOrderNote] = []


class RuleOut(BaseModel):
    """A rule in force at a scope (estate, building, meter …) and slot."""

    scope_level: str
    scope_key: str
    slot: str
    enabled: bool
    rule: dict[str, Any] = Field(description="the rule's parameters, as its kind takes them")
    builtin: bool


class SubscriptionOut(BaseModel):
    subscription_id: uuid.UUID
    audience: str
    role: str | None
    estate: str | None
    tenant_id: str | None
    channel: str
    address: str
    language: str
    min_severity: str
    alarm_types: list[str] | None
    quiet_start: str | None
    quiet_end: str | None
    created_at: datetime
    managed_by: str | None = Field(
        default=None, description="tenant_settings when the tenant's notification settings manage it"
    )


class AlarmActionOut(BaseModel):
    """One staff action on an alarm (acknowledge, resolve), from its action log."""

    action: str
    actor: str
    reason: str | None
    version: int = Field(description="the alarm's version this action produced")
    at: datetime
