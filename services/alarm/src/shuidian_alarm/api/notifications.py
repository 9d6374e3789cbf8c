"""Subscriptions, a tenant's own notification settings, and the delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Any, Literal, Self

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from shuidian_alarm.api.deps import Notify
from shuidian_alarm.api.schemas import PRINTABLE, Filter, Limit, LocalTime, Name, Strict
from shuidian_alarm.domain.notify.preferences import EMAIL, PHONE, QUIET, Saved, TenantSettings
from shuidian_shared.contracts.alarm import NotificationOut
from shuidian_shared.messages import AlarmSeverity, Identifier

router = APIRouter()


class SubscriptionIn(Strict):
    audience: Literal["staff", "tenant"]
    role: Identifier | None = Field(default=None, description="staff role, e.g. estate_manager, maintenance")
    estate: Name | None = Field(default=None, description="staff: only this estate (none = all)")
    tenant_id: Identifier | None = None
    channel: Literal["webhook", "email", "sms", "mqtt"]
    address: str = Field(
        default="", max_length=500, pattern=PRINTABLE, description="URL, e-mail, phone; for mqtt the tenant id"
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, pattern=PRINTABLE, description="webhook signing secret"
    )
    language: Literal["zh-CN", "en"] = "zh-CN"
    min_severity: AlarmSeverity = AlarmSeverity.WARNING
    alarm_types: list[Identifier] | None = None
    quiet_start: LocalTime | None = None
    quiet_end: LocalTime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.audience == "staff") != (self.role is not None):
            raise ValueError("staff subscriptions need a role, tenant ones have none")
        if (self.audience == "tenant") != (self.tenant_id is not None):
            raise ValueError("tenant subscriptions need a tenant_id, staff ones have none")
        if self.audience == "tenant" and self.estate is not None:
            raise ValueError("a tenant subscription is scoped by its tenant, not an estate")
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError("quiet hours need both quiet_start and quiet_end")
        if self.channel == "mqtt":
            if self.audience != "tenant":
                raise ValueError("MQTT push goes to a tenant's app")
            if self.address not in ("", self.tenant_id):
                raise ValueError("an MQTT subscription's address is its own tenant id")
            self.address = self.tenant_id or ""
        elif self.channel == "webhook":
            if self.audience != "staff" or not self.address.startswith(("http://", "https://")):
                raise ValueError("webhooks are for staff systems and need an http(s) URL")
        elif self.channel == "email" and not EMAIL.match(self.address):
            raise ValueError("not an e-mail address")
        elif self.channel == "sms" and not PHONE.match(self.address):
            raise ValueError("not a phone number (digits, optional leading +)")
        return self


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
    quiet_start: LocalTime | None
    quiet_end: LocalTime | None
    created_at: datetime
    managed_by: str | None = Field(
        default=None, description="tenant_settings when the tenant's notification settings manage it"
    )


@router.post(
    "/subscriptions", response_model=SubscriptionOut, status_code=201, tags=["notifications"], summary="Subscribe"
)
async def subscribe(body: SubscriptionIn, notifier: Notify) -> dict[str, Any]:
    fields = body.model_dump()
    fields["min_severity"] = body.min_severity.value
    for name in ("quiet_start", "quiet_end"):
        fields[name] = time.fromisoformat(fields[name]) if fields[name] else None
    return await notifier.subscribe(fields)


@router.get("/subscriptions", response_model=list[SubscriptionOut], tags=["notifications"], summary="Subscriptions")
async def list_subscriptions(notifier: Notify, tenant_id: Filter = None, estate: Filter = None) -> list[dict[str, Any]]:
    return await notifier.subscriptions(tenant_id, estate)


@router.delete("/subscriptions/{subscription_id}", status_code=204, tags=["notifications"], summary="Unsubscribe")
async def unsubscribe(subscription_id: uuid.UUID, notifier: Notify) -> None:
    await notifier.unsubscribe(subscription_id)


TenantChannel = Literal["app", "sms", "email"]
_SETTINGS_EXAMPLE: dict[str, Any] = {
    "low_balance": True,
    "alarms": True,
    "statements": True,
    "channels": ["app", "sms"],
    "quiet_hours": "22:00-07:00",
}


class NotificationSettingsIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{**_SETTINGS_EXAMPLE, "phone": "13800000000", "expected_version": 3}]},
    )

    low_balance: bool = Field(default=True, description="balance_low and balance_exhausted")
    alarms: bool = Field(default=True, description="water_leak, usage_spike, electric_leakage, overload")
    statements: bool = Field(default=True, description="monthly statements (kept here; alarm sends none)")
    channels: list[TenantChannel] = Field(
        default_factory=lambda: list[TenantChannel](["app"]),
        max_length=4,
        description="app (push), sms, email",
    )
    quiet_hours: str | None = Field(default=None, pattern=QUIET.pattern, description="local HH:MM-HH:MM")
    phone: str | None = Field(
        default=None, max_length=30, pattern=PRINTABLE, description="for sms: the phone of billing's tenant record"
    )
    email: str | None = Field(default=None, max_length=200, pattern=PRINTABLE, description="for email")
    expected_version: StrictInt | None = Field(
        default=None, ge=0, description="the version you read (0: none saved yet); 409 if it changed since"
    )


class NotificationSettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "T-0101", **_SETTINGS_EXAMPLE, "version": 4}]}
    )

    tenant_id: str
    low_balance: bool
    alarms: bool
    statements: bool
    channels: list[str]
    quiet_hours: str | None
    version: int = Field(description="0 until the tenant saves settings; +1 with every save")
    phone: str | None
    email: str | None
    subscriptions: list[SubscriptionOut] = Field(description="the subscriptions these settings manage")


def _settings_out(saved: Saved) -> dict[str, Any]:
    return {
        "tenant_id": saved.tenant_id,
        **saved.settings.to_json(),
        "version": saved.version,
        "phone": saved.phone,
        "email": saved.email,
        "subscriptions": saved.subscriptions,
    }


@router.get(
    "/tenants/{tenant_id}/notification-settings",
    response_model=NotificationSettingsOut,
    tags=["notifications"],
    summary="租户通知设置 · A tenant's notification settings (defaults until saved)",
)
async def tenant_settings(tenant_id: Identifier, notifier: Notify) -> dict[str, Any]:
    return _settings_out(await notifier.preferences.get(tenant_id))


@router.put(
    "/tenants/{tenant_id}/notification-settings",
    response_model=NotificationSettingsOut,
    tags=["notifications"],
    summary="保存租户通知设置 · Replace a tenant's settings and the subscriptions they manage",
    description="Atomic: the tenant's managed subscriptions become exactly what the settings say. 409 "
    "(`version_conflict`) when `expected_version` is no longer current; 422 when a channel cannot be served "
    "(sms without a phone, email without an address).",
)
async def put_tenant_settings(tenant_id: Identifier, body: NotificationSettingsIn, notifier: Notify) -> dict[str, Any]:
    channels = tuple(dict.fromkeys(body.channels))  # each channel once, in the order given
    settings = TenantSettings(
        low_balance=body.low_balance,
        alarms=body.alarms,
        statements=body.statements,
        channels=channels,
        quiet_hours=body.quiet_hours,
    )
    saved = await notifier.preferences.put(
        tenant_id, settings, phone=body.phone, email=body.email, expected_version=body.expected_version
    )
    return _settings_out(saved)


@router.get(
    "/notifications",
    response_model=list[NotificationOut],
    tags=["notifications"],
    summary="Delivery log: every notification with its attempts",
)
async def notifications(
    notifier: Notify,
    alarm_id: uuid.UUID | None = None,
    subscription_id: uuid.UUID | None = None,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    return await notifier.log(alarm_id, subscription_id, status, limit)


@router.post(
    "/notifications/{notification_id}/retry", status_code=202, tags=["notifications"], summary="Retry a dead letter"
)
async def retry_notification(notification_id: uuid.UUID, notifier: Notify) -> dict[str, str]:
    await notifier.retry(notification_id)
    return {"status": "pending"}
