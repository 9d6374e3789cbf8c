"""A tenant's own notification settings decide what alarm sends them: real SMS provider endpoint (an HTTP server
started here, speaking the Aliyun answer), real SMTP server, real broker for the app push, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from fastapi import FastAPI, Request, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.adapters.container import Components
from shuidian_alarm.app import compose
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.notify.preferences import TenantSettings
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.errors import Conflict, InvalidSettings, VersionConflict
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_app
from shuidian_devstack.pytest_plugin import eventually, migrated_engine
from shuidian_kit.mqtt import BrokerAddress, MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import AlarmSeverity, TenantNotification

pytestmark = pytest.mark.integration
SH = "Asia/Shanghai"
SMS_PATH = "sms-provider"


class Mailbox:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.recipients.extend(envelope.rcpt_tos)
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def smtp() -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()


class SmsProvider:
    """Every phone number the provider endpoint was asked to text."""

    def __init__(self) -> None:
        self.phones: list[str] = []
        self.base = ""


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def sms() -> AsyncIterator[SmsProvider]:
    provider = SmsProvider()
    app = FastAPI()

    @app.get(f"/{SMS_PATH}")
    async def send(request: Request) -> Response:
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        provider.phones.append(params["PhoneNumbers"])
        return Response(json.dumps({"Code": "OK", "BizId": "1"}), media_type="application/json")

    port = free_port()
    async with serve_app(app, port):
        provider.base = f"http://127.0.0.1:{port}"
        yield provider


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_alarm", "alarm")
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def service(engine: AsyncEngine, smtp: Any, sms: SmsProvider, mqtt_url: str) -> AsyncIterator[Components]:
    controller, _ = smtp
    settings = AlarmSettings(
        environment="test",
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        sms_endpoint=f"{sms.base}/{SMS_PATH}",
        sms_access_key_id="key-id",
        sms_access_key_secret="sms-secret-0123456789",
        sms_template_code="SMS_0001",
        notify_backoff_seconds=0.01,
    )
    mqtt = MqttLink(mqtt_url, service="alarm", instance=f"t-{uuid.uuid4().hex[:6]}", clean_session=True)
    link = asyncio.create_task(mqtt.run())
    async with httpx.AsyncClient(timeout=5) as http:
        await mqtt.wait_connected(10)
        yield compose(settings, engine, Outbox(engine, mqtt, "alarm"), mqtt, http)
    link.cancel()
    with pytest.raises(asyncio.CancelledError):
        await link


def uid() -> str:
    return uuid.uuid4().hex[:8]


def phone() -> str:
    return "1380" + str(uuid.uuid4().int)[:7]


async def household(c: Components) -> tuple[str, str, str]:
    """A tenant with an account and a meter in their room: (tenant, account, meter)."""
    tenant, meter = f"tenant-{uid()}", f"m-{uid()}"
    account = f"acc-{tenant}"
    await c.evaluator.put_targets(
        [Target(meter_id=meter, account_id=account, estate=f"estate-{uid()}", room=f"R-{uid()}", tenant_id=tenant)]
    )
    return tenant, account, meter


async def raise_alarm(c: Components, source: str, alarm_type: str, severity: AlarmSeverity) -> str:
    await c.alarms.apply([Raise(source, alarm_type, severity, f"测试告警 {alarm_type}", f"test {alarm_type}")])
    (alarm,) = await c.alarms.alarms(source, alarm_type, None, 10)
    return str(alarm["alarm_id"])


async def notifications(c: Components, alarm_id: str) -> list[dict[str, Any]]:
    return await c.notifier.log(uuid.UUID(alarm_id), None, None, 100)


def by_channel(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Notifications by channel, where a tenant has one subscription per channel."""
    channels = {n["channel"]: n for n in found}
    assert len(channels) == len(found), "one notification per channel"
    return channels


async def settle(c: Components, alarm_id: str) -> list[dict[str, Any]]:
    async def done() -> list[list[dict[str, Any]]] | None:
        await c.notifier.deliver_due()
        found = await notifications(c, alarm_id)
        return [found] if all(n["status"] != "pending" for n in found) else None

    (found,) = await eventually(done, f"notifications of {alarm_id} to settle")
    return found


@contextlib.asynccontextmanager
async def pushes(mqtt_url: str, tenants: list[str]) -> AsyncIterator[dict[str, list[TenantNotification]]]:
    """App pushes received on each tenant's own topic while the block runs."""
    received: dict[str, list[TenantNotification]] = {t: [] for t in tenants}
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        for tenant in tenants:
            await client.subscribe(topics.tenant_notifications(tenant), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                push = TenantNotification.model_validate_json(bytes(message.payload))
                assert message.topic.value == topics.tenant_notifications(push.tenant_id)
                received[push.tenant_id].append(push)

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_sms_off_means_no_sms_for_low_balance_but_the_app_push_and_b_is_unaffected(
    service: Components, sms: SmsProvider, mqtt_url: str
) -> None:
    prefs = service.notifier.preferences
    (a, account_a, _), (b, account_b, _) = await household(service), await household(service)
    phone_a, phone_b = phone(), phone()
    # A had SMS on, then turns it off; B keeps it on.
    first = await prefs.put(a, TenantSettings(channels=("app", "sms")), phone=phone_a, email=None, expected_version=0)
    await prefs.put(a, TenantSettings(channels=("app",)), phone=phone_a, email=None, expected_version=first.version)
    await prefs.put(b, TenantSettings(channels=("app", "sms")), phone=phone_b, email=None, expected_version=0)

    async with pushes(mqtt_url, [a, b]) as pushed:
        alarm_a = await raise_alarm(service, account_a, "balance_low", AlarmSeverity.WARNING)
        alarm_b = await raise_alarm(service, account_b, "balance_low", AlarmSeverity.WARNING)
        sent_a, sent_b = by_channel(await settle(service, alarm_a)), by_channel(await settle(service, alarm_b))
        await eventually(lambda: _ready(bool(pushed[a]) and bool(pushed[b])), "both app pushes")
    assert set(sent_a) == {"mqtt"}
    assert set(sent_b) == {"mqtt", "sms"}
    assert all(n["status"] == "delivered" for n in [*sent_a.values(), *sent_b.values()])
    assert phone_a not in sms.phones
    assert sms.phones.count(phone_b) == 1
    assert [str(p.alarm_id) for p in pushed[a]] == [alarm_a]
    assert [str(p.alarm_id) for p in pushed[b]] == [alarm_b]


async def test_quiet_hours_hold_a_warning_but_not_a_critical(service: Components, sms: SmsProvider) -> None:
    prefs = service.notifier.preferences
    (quiet, account, meter), (loud, loud_account, _) = await household(service), await household(service)
    # A quiet window that certainly contains now: from a minute ago to two minutes ago (almost all day).
    local_now = datetime.now(UTC).astimezone(ZoneInfo(SH))
    window = f"{(local_now - timedelta(minutes=1)):%H:%M}-{(local_now - timedelta(minutes=2)):%H:%M}"
    quiet_phone = phone()
    await prefs.put(
        quiet,
        TenantSettings(channels=("sms",), quiet_hours=window),
        phone=quiet_phone,
        email=None,
        expected_version=None,
    )
    await prefs.put(loud, TenantSettings(channels=("sms",)), phone=phone(), email=None, expected_version=None)

    warning = await raise_alarm(service, account, "balance_low", AlarmSeverity.WARNING)
    critical = await raise_alarm(service, meter, "electric_leakage", AlarmSeverity.CRITICAL)
    loud_warning = await raise_alarm(service, loud_account, "balance_low", AlarmSeverity.WARNING)
    await settle(service, critical)
    await settle(service, loud_warning)
    await service.notifier.deliver_due()
    held = by_channel(await notifications(service, warning))["sms"]
    assert held["status"] == "pending"
    assert held["next_attempt_at"] > datetime.now(UTC) + timedelta(hours=23)
    assert by_channel(await notifications(service, critical))["sms"]["status"] == "delivered"
    assert by_channel(await notifications(service, loud_warning))["sms"]["status"] == "delivered"
    assert sms.phones.count(quiet_phone) == 1  # the critical one only


async def test_a_tenant_without_saved_settings_gets_the_defaults(service: Components, mqtt_url: str) -> None:
    tenant, account, meter = await household(service)
    before = await service.notifier.preferences.get(tenant)
    assert (before.version, before.settings, before.subscriptions) == (0, TenantSettings(), [])
    async with pushes(mqtt_url, [tenant]) as pushed:
        leak = await raise_alarm(service, meter, "water_leak", AlarmSeverity.MAJOR)
        low = await raise_alarm(service, account, "balance_low", AlarmSeverity.WARNING)
        housekeeping = await raise_alarm(service, meter, "tamper", AlarmSeverity.MAJOR)
        assert set(by_channel(await settle(service, leak))) == {"mqtt"}
        assert set(by_channel(await settle(service, low))) == {"mqtt"}
        await eventually(lambda: _ready(len(pushed[tenant]) >= 2), "default app pushes")
    assert await notifications(service, housekeeping) == []
    assert sorted(str(p.alarm_id) for p in pushed[tenant]) == sorted([leak, low])
    after = await service.notifier.preferences.get(tenant)
    assert after.version == 0
    assert [(s["channel"], s["address"], s["managed_by"]) for s in after.subscriptions] == [
        ("mqtt", tenant, "tenant_settings")
    ]


async def test_saving_replaces_only_the_managed_subscriptions_and_checks_versions(
    service: Components, engine: AsyncEngine, smtp: Any
) -> None:
    _, mailbox = smtp
    prefs = service.notifier.preferences
    tenant, account, _ = await household(service)
    staff_made = await service.notifier.subscribe(
        {
            "audience": "tenant",
            "role": None,
            "estate": None,
            "tenant_id": tenant,
            "channel": "email",
            "address": f"staff-{tenant}@example.com",
            "secret": None,
            "language": "en",
            "min_severity": "warning",
            "alarm_types": None,
            "quiet_start": None,
            "quiet_end": None,
        }
    )
    with pytest.raises(InvalidSettings, match="phone"):
        await prefs.put(tenant, TenantSettings(channels=("sms",)), phone=None, email=None, expected_version=0)
    with pytest.raises(InvalidSettings, match="phone"):
        await prefs.put(tenant, TenantSettings(channels=("sms",)), phone="call me", email=None, expected_version=0)
    with pytest.raises(InvalidSettings, match="wechat"):
        await prefs.put(tenant, TenantSettings(channels=("wechat",)), phone=None, email=None, expected_version=0)
    with pytest.raises(InvalidSettings, match="e-mail"):
        await prefs.put(tenant, TenantSettings(channels=("email",)), phone=None, email=None, expected_version=0)
    assert (await prefs.get(tenant)).version == 0  # nothing of a refused save stayed
    own_mail = f"own-{tenant}@example.com"
    saved = await prefs.put(
        tenant,
        TenantSettings(low_balance=True, alarms=False, channels=("app", "email")),
        phone=None,
        email=own_mail,
        expected_version=0,
    )
    assert saved.version == 1
    assert {(s["channel"], s["address"], tuple(s["alarm_types"])) for s in saved.subscriptions} == {
        ("mqtt", tenant, ("balance_low", "balance_exhausted")),
        ("email", own_mail, ("balance_low", "balance_exhausted")),
    }
    with pytest.raises(VersionConflict):
        await prefs.put(tenant, TenantSettings(channels=("app",)), phone=None, email=None, expected_version=0)
    with pytest.raises(Conflict):
        await service.notifier.unsubscribe(saved.subscriptions[0]["subscription_id"])

    leak = await raise_alarm(service, f"m-{uid()}", "water_leak", AlarmSeverity.MAJOR)  # not the tenant's
    low = await raise_alarm(service, account, "balance_low", AlarmSeverity.WARNING)
    queued = await service.notifier.log(uuid.UUID(low), None, None, 100)
    assert sorted(n["address"] for n in queued) == sorted([tenant, own_mail, f"staff-{tenant}@example.com"])
    await settle(service, low)
    assert mailbox.recipients.count(own_mail) == 1
    assert await notifications(service, leak) == []

    # Everything off: the managed subscriptions go, the staff-made one stays.
    off = await prefs.put(
        tenant, TenantSettings(low_balance=False, alarms=False), phone=None, email=None, expected_version=1
    )
    assert (off.version, off.subscriptions) == (2, [])
    async with engine.connect() as conn:
        left = (
            (
                await conn.execute(
                    text("SELECT subscription_id FROM alarm.subscriptions WHERE tenant_id = :t"), {"t": tenant}
                )
            )
            .scalars()
            .all()
        )
    assert left == [staff_made["subscription_id"]]


async def test_concurrent_saves_with_the_same_version_let_exactly_one_win(service: Components) -> None:
    prefs = service.notifier.preferences
    tenant, _, _ = await household(service)
    outcomes = await asyncio.gather(
        *(
            prefs.put(tenant, TenantSettings(quiet_hours=f"2{i}:00-07:00"), phone=None, email=None, expected_version=0)
            for i in range(4)
        ),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(won) == 1
    assert all(isinstance(o, VersionConflict) for o in outcomes if isinstance(o, BaseException))
    now = await prefs.get(tenant)
    assert (now.version, now.settings) == (1, won[0].settings)
    assert len(now.subscriptions) == 1


async def _ready(value: bool) -> bool:
    return value
