"""Billing's `TenantContact` through the real broker into the running alarm service, on real PostgreSQL: the newest
phone moves the tenant's SMS (stored phone, managed subscription, queued texts), an older one changes nothing, no
phone stops SMS, and a tenant without settings has the phone kept for their first save."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.app import create_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import TenantContact

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tenant() -> str:
    return f"T-{uuid.uuid4().hex[:8]}"


def contact(tenant_id: str, phone: str | None, minutes: int) -> TenantContact:
    return TenantContact(
        source="billing-test", tenant_id=tenant_id, phone=phone, changed_at=T0 + timedelta(minutes=minutes)
    )


async def publish(mqtt_url: str, *contacts: TenantContact) -> None:
    """In order over one connection: the broker keeps one publisher's order and alarm handles them in turn."""
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        for c in contacts:
            await client.publish(topics.tenant_contact(c.tenant_id), c.model_dump_json().encode(), qos=1)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"contact-{port}",
        http_port=port,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


async def applied(db: AsyncEngine, c: TenantContact) -> bool:
    async with db.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT message_id FROM alarm.tenant_contacts WHERE tenant_id = :t"), {"t": c.tenant_id}
            )
        ).scalar_one_or_none()
    return held == c.message_id


async def settings(api: httpx.AsyncClient, tenant_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/tenants/{tenant_id}/notification-settings")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sms_addresses(body: dict[str, Any]) -> list[str]:
    return [s["address"] for s in body["subscriptions"] if s["channel"] == "sms"]


async def test_alarm_tenant_contact_moves_sms_to_the_newest_phone_and_none_stops_it(
    api: httpx.AsyncClient, db: AsyncEngine, mqtt_url: str
) -> None:
    who = tenant()
    saved = await api.put(
        f"/v1/tenants/{who}/notification-settings",
        json={"channels": ["app", "sms"], "phone": "13800000001", "expected_version": 0},
    )
    assert saved.status_code == 200, saved.text
    assert sms_addresses(saved.json()) == ["13800000001"]
    sms_id = next(s["subscription_id"] for s in saved.json()["subscriptions"] if s["channel"] == "sms")
    # An SMS queued for the old number (held by quiet hours, say) and not yet sent.
    async with db.begin() as conn:
        alarm_id = uuid.uuid4()
        await conn.execute(
            text(
                "INSERT INTO alarm.alarms (alarm_id, alarm_type, source_id, severity, state, message_zh, message_en) "
                "VALUES (:a, 'water_leak', :s, 'major', 'active', '漏水', 'leak')"
            ),
            {"a": alarm_id, "s": f"W-{who}"},
        )
        await conn.execute(
            text(
                "INSERT INTO alarm.notifications (notification_id, alarm_id, subscription_id, event, channel, address, "
                "subject, body, payload, next_attempt_at) VALUES (:n, :a, :s, 'raised', 'sms', '13800000001', "
                "'漏水', '漏水', '{}', now() + interval '1 day')"
            ),
            {"n": uuid.uuid4(), "a": alarm_id, "s": sms_id},
        )

    newer = contact(who, "13900000002", 10)
    await publish(mqtt_url, newer)
    await eventually(lambda: applied(db, newer), "the new phone to be applied")
    body = await settings(api, who)
    assert (body["phone"], sms_addresses(body), body["version"]) == ("13900000002", ["13900000002"], 1)
    async with db.connect() as conn:
        queued = (
            await conn.execute(
                text("SELECT address FROM alarm.notifications WHERE subscription_id = :s"), {"s": sms_id}
            )
        ).scalars()
        assert list(queued) == ["13900000002"]

    # Older than the one applied (reordered, or redelivered): changes nothing. A later contact of another tenant,
    # published after it on the same connection, shows alarm got past it.
    older, marker = contact(who, "13700000009", 5), contact(tenant(), "13600000000", 0)
    await publish(mqtt_url, older, marker)
    await eventually(lambda: applied(db, marker), "the marker contact")
    assert await applied(db, newer)
    body = await settings(api, who)
    assert (body["phone"], sms_addresses(body)) == ("13900000002", ["13900000002"])

    # Billing no longer has a phone: no SMS subscription (nothing texted to nobody), the queued text dropped with
    # it; the tenant's choice of SMS is kept for when billing has a phone again.
    gone = contact(who, None, 20)
    await publish(mqtt_url, gone)
    await eventually(lambda: applied(db, gone), "the removed phone to be applied")
    body = await settings(api, who)
    assert (body["phone"], sms_addresses(body), body["channels"]) == (None, [], ["app", "sms"])
    assert [s["channel"] for s in body["subscriptions"]] == ["mqtt"]
    back = contact(who, "13500000005", 30)
    await publish(mqtt_url, back)
    await eventually(lambda: applied(db, back), "the phone to come back")
    assert sms_addresses(await settings(api, who)) == ["13500000005"]


async def test_alarm_tenant_contact_without_settings_is_kept_for_the_first_save(
    api: httpx.AsyncClient, db: AsyncEngine, mqtt_url: str
) -> None:
    who = tenant()
    first = contact(who, "13800000007", 1)
    await publish(mqtt_url, first)
    await eventually(lambda: applied(db, first), "the contact to be recorded")
    body = await settings(api, who)
    assert (body["version"], body["phone"], body["subscriptions"]) == (0, "13800000007", [])
    saved = await api.put(f"/v1/tenants/{who}/notification-settings", json={"channels": ["sms"], "expected_version": 0})
    assert saved.status_code == 200, saved.text
    assert (saved.json()["phone"], sms_addresses(saved.json())) == ("13800000007", ["13800000007"])
