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

import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import time
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_kit.errors import Conflict, ServiceError
from shuidian_shared import topics
from shuidian_shared.messages import TenantContact

log = logging.getLogger(__name__)

MANAGED: Final = "tenant_settings"
BALANCE_TYPES: Final = ("balance_low", "balance_exhausted")
# What a tenant hears about: their money (above), their water and their safety; not device housekeeping.
SAFETY_TYPES: Final = ("water_leak", "usage_spike", "electric_leakage", "overload")
_CHANNEL_OF: Final = {"app": "mqtt", "sms": "sms", "email": "email"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+?[0-9]{6,15}$")
QUIET = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")


class InvalidSettings(ServiceError):
    status_code = 422
    code = "invalid_settings"


class VersionConflict(Conflict):
    code = "version_conflict"


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


async def _sync(conn: AsyncConnection, tenant_id: str, wanted: list[dict[str, Any]]) -> None:
    """Make the tenant's managed subscriptions exactly `wanted`: one per channel, updated in place (the delivery log
    of a kept channel survives), removed channels deleted (their queued notifications with them)."""
    channels = [w["channel"] for w in wanted]
    await conn.execute(
        text(
            "DELETE FROM alarm.subscriptions WHERE tenant_id = :t AND managed_by IS NOT NULL "
            "AND NOT (channel = ANY(:c))"
        ),
        {"t": tenant_id, "c": channels},
    )
    if not wanted:
        return
    await conn.execute(
        text(
            "INSERT INTO alarm.subscriptions (subscription_id, audience, tenant_id, channel, address, language, "
            "min_severity, alarm_types, quiet_start, quiet_end, managed_by) VALUES (:id, 'tenant', :t, :channel, "
            ":address, 'zh-CN', 'warning', :alarm_types, :quiet_start, :quiet_end, :managed) "
            "ON CONFLICT (tenant_id, channel) WHERE managed_by IS NOT NULL DO UPDATE SET address = EXCLUDED.address, "
            "alarm_types = EXCLUDED.alarm_types, quiet_start = EXCLUDED.quiet_start, quiet_end = EXCLUDED.quiet_end"
        ),
        [{"id": uuid.uuid4(), "t": tenant_id, "managed": MANAGED, **w} for w in wanted],
    )


async def ensure_defaults(conn: AsyncConnection, tenant_id: str) -> None:
    """Inside an alarm's transaction: a tenant who never saved settings gets the default set (version 0)."""
    created = (
        await conn.execute(
            text(
                "INSERT INTO alarm.tenant_settings (tenant_id, settings, phone, version) SELECT :t, "
                "CAST(:s AS jsonb), (SELECT phone FROM alarm.tenant_contacts WHERE tenant_id = :t), 0 "
                "ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id"
            ),
            {"t": tenant_id, "s": json.dumps(TenantSettings().to_json())},
        )
    ).first()
    if created is not None:
        await _sync(conn, tenant_id, managed_subscriptions(tenant_id, TenantSettings(), None, None))


class Preferences:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, tenant_id: str) -> Saved:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT settings, version, phone, email FROM alarm.tenant_settings WHERE tenant_id = :t"),
                    {"t": tenant_id},
                )
            ).first()
            subs = await self._managed(conn, tenant_id)
            if row is None:  # no settings yet: the phone billing announced, if any
                phone = await _contact_phone(conn, tenant_id)
                return Saved(tenant_id=tenant_id, settings=TenantSettings(), version=0, phone=phone, subscriptions=subs)
        return Saved(
            tenant_id=tenant_id,
            settings=TenantSettings.from_json(row.settings),
            version=row.version,
            phone=row.phone,
            email=row.email,
            subscriptions=subs,
        )

    async def put(
        self,
        tenant_id: str,
        settings: TenantSettings,
        *,
        phone: str | None,
        email: str | None,
        expected_version: int | None,
    ) -> Saved:
        """Replace the tenant's settings and the subscriptions they manage, atomically.

        `expected_version` (the version the client read; 0 = none saved yet) must still be current, else
        VersionConflict: checked before the settings are judged, so a stale client hears "re-read" first. Without a
        `phone`, the newest one billing announced is used."""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO alarm.tenant_settings (tenant_id, settings, version) VALUES (:t, CAST(:s AS jsonb), 0) "
                    "ON CONFLICT (tenant_id) DO NOTHING"
                ),
                {"t": tenant_id, "s": json.dumps(TenantSettings().to_json())},
            )
            current = (
                await conn.execute(
                    text("SELECT version FROM alarm.tenant_settings WHERE tenant_id = :t FOR UPDATE"), {"t": tenant_id}
                )
            ).scalar_one()
            if expected_version is not None and expected_version != current:
                raise VersionConflict(
                    f"设置已被修改，请刷新 · the settings changed since you read them (now version {current})"
                )
            if phone is None:  # read after the settings lock: the order `apply_contact` takes them in
                phone = await _contact_phone(conn, tenant_id, lock=True)
            wanted = managed_subscriptions(tenant_id, settings, phone, email)
            version = current + 1
            await conn.execute(
                text(
                    "UPDATE alarm.tenant_settings SET settings = CAST(:s AS jsonb), phone = :p, email = :e, "
                    "version = :v, updated_at = now() WHERE tenant_id = :t"
                ),
                {"t": tenant_id, "s": json.dumps(settings.to_json()), "p": phone, "e": email, "v": version},
            )
            await _sync(conn, tenant_id, wanted)
            subs = await self._managed(conn, tenant_id)
        return Saved(
            tenant_id=tenant_id, settings=settings, version=version, phone=phone, email=email, subscriptions=subs
        )

    async def on_contact(self, contact: TenantContact, topic: str) -> None:
        """The broker handler for billing's `TenantContact` (every replica takes every one; newest wins)."""
        if topics.segment(topic, 1) != contact.tenant_id:
            log.warning("dropped TenantContact for %s on another tenant's topic %s", contact.tenant_id, topic)
            return
        await self.apply_contact(contact)

    async def apply_contact(self, contact: TenantContact) -> bool:
        """Take billing's phone for a tenant, unless alarm already holds a contact as new; whether it was taken."""
        tenant_id = contact.tenant_id
        async with self._engine.begin() as conn:
            # The settings row before the contact row, as `put` locks them: the two never deadlock.
            row = (
                await conn.execute(
                    text("SELECT settings, email FROM alarm.tenant_settings WHERE tenant_id = :t FOR UPDATE"),
                    {"t": tenant_id},
                )
            ).first()
            taken = (
                await conn.execute(
                    text(
                        "INSERT INTO alarm.tenant_contacts (tenant_id, phone, changed_at, message_id) "
                        "VALUES (:t, :p, :c, :m) ON CONFLICT (tenant_id) DO UPDATE SET phone = EXCLUDED.phone, "
                        "changed_at = EXCLUDED.changed_at, message_id = EXCLUDED.message_id, applied_at = now() "
                        "WHERE alarm.tenant_contacts.changed_at < EXCLUDED.changed_at RETURNING tenant_id"
                    ),
                    {"t": tenant_id, "p": contact.phone, "c": contact.changed_at, "m": contact.message_id},
                )
            ).first()
            if taken is None or row is None:
                return taken is not None  # older than what alarm holds; or recorded for the tenant's first save
            settings = TenantSettings.from_json(row.settings)
            served = settings
            if "sms" in settings.channels and not (contact.phone and PHONE.match(contact.phone)):
                log.warning(
                    "tenant %s chose SMS but billing now has no usable phone (%r): SMS stopped until it has one",
                    tenant_id,
                    contact.phone,
                )
                served = replace(settings, channels=tuple(c for c in settings.channels if c != "sms"))
            await conn.execute(
                text("UPDATE alarm.tenant_settings SET phone = :p WHERE tenant_id = :t"),
                {"t": tenant_id, "p": contact.phone},
            )
            await _sync(conn, tenant_id, managed_subscriptions(tenant_id, served, contact.phone, row.email))
            # What is still queued for the old number goes to the new one (a dropped subscription took its own).
            await conn.execute(
                text(
                    "UPDATE alarm.notifications n SET address = s.address FROM alarm.subscriptions s "
                    "WHERE s.subscription_id = n.subscription_id AND s.tenant_id = :t AND s.managed_by IS NOT NULL "
                    "AND s.channel = 'sms' AND n.status = 'pending' AND n.address <> s.address"
                ),
                {"t": tenant_id},
            )
        return True

    @staticmethod
    async def _managed(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
        rows = await conn.execute(
            text("SELECT * FROM alarm.subscriptions WHERE tenant_id = :t AND managed_by IS NOT NULL ORDER BY channel"),
            {"t": tenant_id},
        )
        return [r._asdict() for r in rows]


async def _contact_phone(conn: AsyncConnection, tenant_id: str, *, lock: bool = False) -> str | None:
    """The phone of billing's newest `TenantContact` for the tenant (None if none came or it had none)."""
    row = (
        await conn.execute(
            text("SELECT phone FROM alarm.tenant_contacts WHERE tenant_id = :t" + (" FOR SHARE" if lock else "")),
            {"t": tenant_id},
        )
    ).first()
    return None if row is None else row.phone
