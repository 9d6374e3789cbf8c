"""A tenant's notification settings and the subscriptions they manage, stored (the rules: `domain.notify.preferences`)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.domain.notify.preferences import (
    MANAGED,
    Saved,
    TenantSettings,
    managed_subscriptions,
    served_with_phone,
)
from shuidian_alarm.errors import VersionConflict
from shuidian_shared import topics
from shuidian_shared.messages import TenantContact

log = logging.getLogger(__name__)


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
            served = served_with_phone(settings, contact.phone)
            if served != settings:
                log.warning(
                    "tenant %s chose SMS but billing now has no usable phone (%r): SMS stopped until it has one",
                    tenant_id,
                    contact.phone,
                )
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
