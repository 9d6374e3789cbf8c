"""A tenant's own notification settings (what the tenant app shows as 通知设置) and the subscriptions they manage.

Alarm is the service that sends, so it owns the tenant's choice. Saving the settings replaces, in one transaction,
the subscriptions they manage for that tenant (`managed_by = 'tenant_settings'`, one per channel):

* `low_balance` → `balance_low`, `balance_exhausted`; `alarms` → the other tenant-facing types (leak, spike,
  leakage, overload); `statements` is kept for the statement service and sends nothing here;
* channel `app` → MQTT push on the tenant's own topic, `sms` → SMS to the phone passed with the settings (billing's
  tenant record), `email` → e-mail to the address passed with them;
* `quiet_hours` "HH:MM-HH:MM" (local time) → the subscriptions' quiet hours; critical alarms still go at once.

A tenant who never saved settings gets the defaults of the settings model (every tenant-facing type, app push, no
quiet hours): the first alarm alarm has for them writes the default set as version 0. Staff-created subscriptions
for a tenant (`POST /v1/subscriptions`) are left alone and apply in addition.

Billing announces the tenant's phone (`TenantContact`, retained per tenant) whenever staff create the tenant or change
it. Alarm keeps the newest per tenant (`alarm.tenant_contacts`, by billing's `changed_at`; an older one changes
nothing) and, for a tenant with settings, moves the stored phone, the managed SMS subscription and the SMS still
queued for it to the new number, in one transaction; the tenant's settings (and their version) stay as they are.
A tenant without settings yet only has the contact recorded: a later save that carries no phone uses it. With no
usable phone left, a tenant who chose SMS keeps the choice but loses the SMS subscription (logged) until billing
announces a phone again; nothing is texted to nobody.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import time
from typing import Any, Final

from shuidian_alarm.errors import InvalidSettings

MANAGED: Final = "tenant_settings"
BALANCE_TYPES: Final = ("balance_low", "balance_exhausted")
# What a tenant hears about: their money (above), their water and their safety; not device housekeeping.
SAFETY_TYPES: Final = ("water_leak", "usage_spike", "electric_leakage", "overload")
_CHANNEL_OF: Final = {"app": "mqtt", "sms": "sms", "email": "email"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+?[0-9]{6,15}$")
QUIET = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")


@dataclass(frozen=True, kw_only=True)
class TenantSettings:
    """The tenant app's settings; the defaults are what a tenant who never saved any receives."""

    low_balance: bool = True
    alarms: bool = True
    statements: bool = True
    channels: tuple[str, ...] = ("app",)
    quiet_hours: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "low_balance": self.low_balance,
            "alarms": self.alarms,
            "statements": self.statements,
            "channels": list(self.channels),
            "quiet_hours": self.quiet_hours,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TenantSettings:
        return cls(
            low_balance=bool(raw.get("low_balance", True)),
            alarms=bool(raw.get("alarms", True)),
            statements=bool(raw.get("statements", True)),
            channels=tuple(raw.get("channels", ("app",))),
            quiet_hours=raw.get("quiet_hours"),
        )


@dataclass(frozen=True, kw_only=True)
class Saved:
    tenant_id: str
    settings: TenantSettings
    version: int
    phone: str | None = None
    email: str | None = None
    subscriptions: list[dict[str, Any]] = field(default_factory=list)


def alarm_types(settings: TenantSettings) -> list[str]:
    return [*(BALANCE_TYPES if settings.low_balance else ()), *(SAFETY_TYPES if settings.alarms else ())]


def quiet_window(quiet_hours: str | None) -> tuple[time | None, time | None]:
    if quiet_hours is None:
        return None, None
    start, end = quiet_hours.split("-")
    return time.fromisoformat(start), time.fromisoformat(end)


def managed_subscriptions(
    tenant_id: str, settings: TenantSettings, phone: str | None, email: str | None
) -> list[dict[str, Any]]:
    """The subscriptions `settings` stand for (pure); InvalidSettings names what cannot be honoured."""
    unknown = set(settings.channels) - set(_CHANNEL_OF)
    if unknown:
        raise InvalidSettings(f"channels must be among {sorted(_CHANNEL_OF)}, not {sorted(unknown)}")
    if settings.quiet_hours is not None and not QUIET.match(settings.quiet_hours):
        raise InvalidSettings("quiet_hours must be HH:MM-HH:MM (local time), e.g. 22:00-07:00")
    if "sms" in settings.channels and not (phone and PHONE.match(phone)):
        raise InvalidSettings("没有登记手机号，无法短信通知 · no valid phone number on file for SMS notifications")
    if "email" in settings.channels and not (email and EMAIL.match(email)):
        raise InvalidSettings("没有登记电子邮箱，无法邮件通知 · no e-mail address on file for e-mail notifications")
    types = alarm_types(settings)
    if not types:
        return []
    start, end = quiet_window(settings.quiet_hours)
    address = {"app": tenant_id, "sms": phone or "", "email": email or ""}
    return [
        {
            "channel": _CHANNEL_OF[name],
            "address": address[name],
            "alarm_types": types,
            "quiet_start": start,
            "quiet_end": end,
        }
        for name in settings.channels
    ]


def served_with_phone(settings: TenantSettings, phone: str | None) -> TenantSettings:
    """What can be served of `settings` with this phone: without a usable one, every channel but SMS (the tenant's
    choice itself is kept, and SMS comes back with a phone)."""
    if "sms" in settings.channels and not (phone and PHONE.match(phone)):
        return replace(settings, channels=tuple(c for c in settings.channels if c != "sms"))
    return settings
