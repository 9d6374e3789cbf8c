"""Notifications over real sockets: a real SMTP server (aiosmtpd) and a real HTTP receiver started here, the real
broker for tenant push; signatures verified independently, retries on 5xx, dead letters, tenant isolation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from fastapi import FastAPI, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.adapters.container import Components
from shuidian_alarm.adapters.notify.channels import AliyunSms, AliyunSmsConfig, Channels, aliyun_signature
from shuidian_alarm.adapters.notify.notifier import Notifier
from shuidian_alarm.app import compose
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.detectors.connectivity import CONNECTIVITY, GATEWAY_OFFLINE, METER_OFFLINE
from shuidian_alarm.domain.events import BALANCE_EXHAUSTED, BALANCE_LOW, COMMAND_FAILED
from shuidian_alarm.domain.notify.delivery import DeliveryResult, Outgoing, quiet_until
from shuidian_alarm.domain.notify.templates import TYPE_NAMES
from shuidian_alarm.domain.rules import default_rules
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_app
from shuidian_devstack.pytest_plugin import eventually, migrated_engine
from shuidian_kit.mqtt import BrokerAddress, MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import AlarmSeverity, TenantNotification

pytestmark = pytest.mark.integration
SECRET = "webhook-secret-for-tests-0123456789"


# --- real servers ------------------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.content or b""
        self.messages.append((list(envelope.rcpt_tos), content.encode() if isinstance(content, str) else content))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[tuple[str, str]]:
        """(subject, body) of every message delivered to `address`."""
        out = []
        for rcpts, raw in self.messages:
            if address in rcpts:
                parsed = message_from_bytes(raw)
                payload = parsed.get_payload(decode=True)
                body = payload.decode() if isinstance(payload, bytes) else ""
                out.append((str(make_header(decode_header(parsed["Subject"]))), body))
        return out


@pytest.fixture(scope="module")
def smtp() -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()


@dataclass
class Receiver:
    """A real HTTP server answering from a script of (status, body) per path; records every request."""

    script: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str], bytes, str]] = field(default_factory=list)
    base: str = ""

    def answer(self, path: str) -> tuple[int, str]:
        steps = self.script.get(path, [(200, "{}")])
        return steps.pop(0) if len(steps) > 1 else steps[0]

    def on(self, path: str) -> list[tuple[dict[str, str], bytes, str]]:
        return [(h, b, q) for p, h, b, q in self.requests if p == path]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything(path: str, request: Request) -> Response:
        rec.requests.append((path, dict(request.headers), await request.body(), request.url.query))
        status, body = rec.answer(path)
        return Response(body, status_code=status, media_type="application/json")

    port = free_port()
    async with serve_app(app, port):
        rec.base = f"http://127.0.0.1:{port}"
        yield rec


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_alarm", "alarm")
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def service(engine: AsyncEngine, smtp: Any, mqtt_url: str) -> AsyncIterator[Components]:
    controller, _ = smtp
    settings = AlarmSettings(
        environment="test",
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        webhook_secret=SECRET,
        webhook_allowed_networks="127.0.0.1/32",  # the receivers listen on loopback
        notify_backoff_seconds=0.01,
        notify_max_attempts=4,
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


async def raise_alarm(c: Components, source: str, alarm_type: str, severity: AlarmSeverity) -> None:
    await c.alarms.apply([Raise(source, alarm_type, severity, f"测试告警 {alarm_type}", f"test {alarm_type}")])


async def settle(c: Components, alarm_source: str) -> list[dict[str, Any]]:
    """Deliver until every notification about `alarm_source` is delivered or dead; the delivery log."""

    async def done() -> list[list[dict[str, Any]]] | None:
        await c.notifier.deliver_due()
        log = [
            n
            for alarm in await c.alarms.alarms(alarm_source, None, None, 100)
            for n in await c.notifier.log(alarm["alarm_id"], None, None, 100)
        ]
        return [log] if all(n["status"] != "pending" for n in log) else None

    (log,) = await eventually(done, f"notifications about {alarm_source} to settle")
    return log


# --- e-mail ----------------------------------------------------------------------------------------------


async def test_email_reaches_a_real_smtp_server_in_the_subscribers_language(service: Components, smtp: Any) -> None:
    _, mailbox = smtp
    estate, meter = f"estate-{uid()}", f"m-{uid()}"
    await service.evaluator.put_targets([Target(meter_id=meter, estate=estate, building="3号楼", room="301")])
    zh, en = f"zh-{uid()}@example.com", f"en-{uid()}@example.com"
    for address, language in ((zh, "zh-CN"), (en, "en")):
        await service.notifier.subscribe(_staff(estate, "email", address, language=language))
    await raise_alarm(service, meter, "water_leak", AlarmSeverity.MAJOR)
    log = await settle(service, meter)
    assert sorted((n["status"], n["attempts"], n["last_status_code"]) for n in log) == [("delivered", 1, 250)] * 2
    [(subject_zh, body_zh)] = mailbox.to(zh)
    [(subject_en, body_en)] = mailbox.to(en)
    assert "疑似漏水" in subject_zh
    assert "重要" in subject_zh
    assert "3号楼 301" in body_zh
    assert "Suspected water leak" in subject_en
    assert "Severity: Major" in body_en


def _staff(estate: str | None, channel: str, address: str, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "audience": "staff",
        "role": "estate_manager",
        "estate": estate,
        "tenant_id": None,
        "channel": channel,
        "address": address,
        "secret": None,
        "language": "zh-CN",
        "min_severity": "warning",
        "alarm_types": None,
        "quiet_start": None,
        "quiet_end": None,
    }
    return {**fields, **extra}


def _tenant(tenant: str, channel: str, address: str) -> dict[str, Any]:
    return {**_staff(None, channel, address), "audience": "tenant", "role": None, "tenant_id": tenant}


# --- webhooks --------------------------------------------------------------------------------------------


def verify(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """What an integrator does: recompute HMAC-SHA256 over "<timestamp>." + body and compare in constant time."""
    timestamp = headers["x-shuidian-timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(datetime.now(UTC).timestamp() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(expected, headers["x-shuidian-signature"])


async def test_webhook_is_signed_and_retried_after_500s(service: Components, receiver: Receiver) -> None:
    estate, meter, path = f"estate-{uid()}", f"m-{uid()}", f"hook-{uid()}"
    receiver.script[path] = [(500, "oops"), (502, "bad gateway"), (200, "{}")]
    await service.evaluator.put_targets([Target(meter_id=meter, estate=estate)])
    own_secret = "integrator-secret-abcdefghijklmnop"
    await service.notifier.subscribe(_staff(estate, "webhook", f"{receiver.base}/{path}", secret=own_secret))
    await raise_alarm(service, meter, "meter_offline", AlarmSeverity.WARNING)
    (notification,) = await settle(service, meter)
    assert (notification["status"], notification["attempts"]) == ("delivered", 3)
    assert [a["status_code"] for a in notification["attempt_log"]] == [500, 502, 200]
    calls = receiver.on(path)
    assert len(calls) == 3
    for headers, body, _ in calls:
        assert verify(headers, body, own_secret)
        assert not verify(headers, body, SECRET)  # the subscription's own secret, not the default
        assert headers["x-shuidian-delivery"] == str(notification["notification_id"])
        assert json.loads(body)["alarm_type"] == "meter_offline"
    tampered = calls[0][1].replace(b"meter_offline", b"meter_online!")
    assert not verify(calls[0][0], tampered, own_secret)


async def test_dead_letter_after_the_attempt_limit_and_at_once_on_a_4xx(
    service: Components, receiver: Receiver
) -> None:
    estate, meter = f"estate-{uid()}", f"m-{uid()}"
    down, refusing = f"down-{uid()}", f"refusing-{uid()}"
    receiver.script[down] = [(503, "busy")]
    receiver.script[refusing] = [(410, "gone")]
    await service.evaluator.put_targets([Target(meter_id=meter, estate=estate)])
    await service.notifier.subscribe(_staff(estate, "webhook", f"{receiver.base}/{down}"))
    await service.notifier.subscribe(_staff(estate, "webhook", f"{receiver.base}/{refusing}"))
    await raise_alarm(service, meter, "tamper", AlarmSeverity.MAJOR)
    log = await settle(service, meter)
    outcome = sorted((n["address"].rsplit("/", 1)[1], n["status"], n["attempts"]) for n in log)
    assert outcome == sorted([(down, "dead", 4), (refusing, "dead", 1)])
    # After the receiver is fixed, a dead letter can be sent again.
    receiver.script[down] = [(200, "{}")]
    dead = next(n for n in log if n["address"].endswith(down))
    await service.notifier.retry(dead["notification_id"])
    log = await settle(service, meter)
    assert next(n for n in log if n["address"].endswith(down))["status"] == "delivered"


# --- who gets what ---------------------------------------------------------------------------------------


async def test_a_tenant_only_ever_receives_alarms_of_their_own_rooms(
    service: Components, smtp: Any, mqtt_url: str
) -> None:
    _, mailbox = smtp
    estate, gateway = f"estate-{uid()}", f"gw-{uid()}"
    tenants = [f"tenant-{uid()}" for _ in range(3)]
    rooms = {tenant: [f"E-{tenant}-{n}" for n in range(2)] for tenant in tenants}
    await service.evaluator.put_targets(
        [
            Target(meter_id=meter, gateway_id=gateway, account_id=f"acc-{tenant}", estate=estate, tenant_id=tenant)
            for tenant, meters in rooms.items()
            for meter in meters
        ]
    )
    for tenant in tenants:
        await service.notifier.subscribe(_tenant(tenant, "email", f"{tenant}@example.com"))
        await service.notifier.subscribe(_tenant(tenant, "mqtt", tenant))
    rng = random.Random(7)
    sources = [m for meters in rooms.values() for m in meters] + [f"acc-{t}" for t in tenants] + [gateway]
    types = ["water_leak", "balance_low", "balance_exhausted", "tamper", "meter_offline", "usage_spike"]
    expected: dict[str, set[str]] = {t: set() for t in tenants}
    owner = {m: t for t, meters in rooms.items() for m in meters} | {f"acc-{t}": t for t in tenants}
    raised = []
    for _ in range(12):
        source, alarm_type = rng.choice(sources), rng.choice(types)
        if (source, alarm_type) in raised:
            continue
        raised.append((source, alarm_type))
        await raise_alarm(service, source, alarm_type, AlarmSeverity.MAJOR)
        if source in owner and alarm_type not in ("tamper", "meter_offline"):
            expected[owner[source]].add(f"{source}/{alarm_type}")

    assert sum(len(v) for v in expected.values()) >= 3, "the draw should give tenants something to receive"
    address = BrokerAddress.parse(mqtt_url)
    pushed: dict[str, set[str]] = {t: set() for t in tenants}
    async with aiomqtt.Client(address.host, address.port) as client:
        for tenant in tenants:
            await client.subscribe(topics.tenant_notifications(tenant), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                push = TenantNotification.model_validate_json(bytes(message.payload))
                assert message.topic.value == topics.tenant_notifications(push.tenant_id)
                (alarm,) = [
                    a
                    for a in await service.alarms.alarms(None, push.alarm_type, None, 1000)
                    if a["alarm_id"] == push.alarm_id
                ]
                pushed[push.tenant_id].add(f"{alarm['source_id']}/{alarm['alarm_type']}")

        collector = asyncio.create_task(collect())
        for source, _ in raised:
            await settle(service, source)
        total = sum(len(v) for v in expected.values())
        await eventually(lambda: _ready(sum(len(v) for v in pushed.values()) >= total), "tenant pushes")
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    assert pushed == expected
    for tenant in tenants:
        mails = mailbox.to(f"{tenant}@example.com")
        assert len(mails) == len(expected[tenant])


async def _ready(value: bool) -> bool:
    return value


# --- quiet hours -----------------------------------------------------------------------------------------

SH = "Asia/Shanghai"


@pytest.mark.parametrize(
    ("utc_now", "start", "end", "until"),
    [
        # 23:30 Shanghai inside 22:00–07:00 → 07:00 next morning (23:00 UTC)
        (datetime(2026, 3, 1, 15, 30, tzinfo=UTC), time(22), time(7), datetime(2026, 3, 1, 23, 0, tzinfo=UTC)),
        # 03:00 Shanghai, after midnight, still inside → 07:00 the same local day
        (datetime(2026, 3, 1, 19, 0, tzinfo=UTC), time(22), time(7), datetime(2026, 3, 1, 23, 0, tzinfo=UTC)),
        # 12:00 Shanghai outside
        (datetime(2026, 3, 1, 4, 0, tzinfo=UTC), time(22), time(7), None),
        # exactly at the end is outside; exactly at the start is inside
        (datetime(2026, 3, 1, 23, 0, tzinfo=UTC), time(22), time(7), None),
        (datetime(2026, 3, 1, 14, 0, tzinfo=UTC), time(22), time(7), datetime(2026, 3, 1, 23, 0, tzinfo=UTC)),
        # a daytime window (a lunch break)
        (datetime(2026, 3, 1, 4, 30, tzinfo=UTC), time(12), time(14), datetime(2026, 3, 1, 6, 0, tzinfo=UTC)),
        (datetime(2026, 3, 1, 4, 30, tzinfo=UTC), None, None, None),
        (datetime(2026, 3, 1, 4, 30, tzinfo=UTC), time(12), time(12), None),
    ],
)
def test_quiet_hours(utc_now: datetime, start: time | None, end: time | None, until: datetime | None) -> None:
    assert quiet_until(utc_now, start, end, SH) == until


async def test_quiet_hours_hold_everything_but_critical(service: Components) -> None:
    estate, meter = f"estate-{uid()}", f"m-{uid()}"
    await service.evaluator.put_targets([Target(meter_id=meter, estate=estate)])
    # A quiet window that certainly contains now: from a minute ago to a minute ago (almost all day).
    local_now = datetime.now(UTC).astimezone(ZoneInfo(SH)).replace(second=0, microsecond=0)
    start, end = (local_now - timedelta(minutes=1)).time(), (local_now - timedelta(minutes=2)).time()
    await service.notifier.subscribe(
        _staff(estate, "email", f"q-{uid()}@example.com", quiet_start=start, quiet_end=end)
    )
    await raise_alarm(service, meter, "battery_low", AlarmSeverity.WARNING)
    await raise_alarm(service, meter, "electric_leakage", AlarmSeverity.CRITICAL)
    await service.notifier.deliver_due()
    by_type = {}
    for alarm in await service.alarms.alarms(meter, None, None, 10):
        (n,) = await service.notifier.log(alarm["alarm_id"], None, None, 10)
        by_type[alarm["alarm_type"]] = n["status"]
    assert by_type == {"battery_low": "pending", "electric_leakage": "delivered"}


# --- SMS -------------------------------------------------------------------------------------------------


def test_aliyun_signature_matches_the_documented_example() -> None:
    # The worked example of Aliyun's RPC signature documentation (DescribeRegions, secret "testsecret").
    params = {
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "Format": "XML",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "SignatureVersion": "1.0",
        "Timestamp": "2016-02-23T12:46:24Z",
        "Version": "2014-05-26",
    }
    assert aliyun_signature("testsecret", "GET", params) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


async def test_aliyun_sms_request_is_signed_and_flow_control_is_retryable(receiver: Receiver) -> None:
    path = f"sms-{uid()}"
    receiver.script[path] = [
        (200, json.dumps({"Code": "OK", "BizId": "1"})),
        (200, json.dumps({"Code": "isv.BUSINESS_LIMIT_CONTROL"})),
        (200, json.dumps({"Code": "isv.MOBILE_NUMBER_ILLEGAL"})),
    ]
    secret = "sms-secret-0123456789"
    config = AliyunSmsConfig(
        endpoint=f"{receiver.base}/{path}",
        access_key_id="key-id",
        access_key_secret=secret,
        sign_name="水电",
        template_code="SMS_0001",
    )
    async with httpx.AsyncClient() as http:
        sms = AliyunSms(http, config)
        results = [await sms.send_sms("+8613800000000", {"title": "余额不足", "content": "请充值"}) for _ in range(3)]
    assert [(r.ok, r.retryable) for r in results] == [(True, False), (False, True), (False, False)]
    for _, _, query in receiver.on(path):
        params = dict(parse_qsl(query, keep_blank_values=True))
        signature = params.pop("Signature")
        assert signature == aliyun_signature(secret, "GET", params)
        assert params["PhoneNumbers"] == "+8613800000000"
        assert json.loads(params["TemplateParam"]) == {"title": "余额不足", "content": "请充值"}
        assert urlsplit(config.endpoint).path == f"/{path}"


@pytest.mark.parametrize(
    ("environment", "secret", "accepted"),
    [
        ("dev", None, True),
        ("test", None, True),
        ("prod", None, False),  # the development default must be replaced in production
        ("prod", "short", False),
        ("prod", "a-real-secret-from-the-vault-0123", True),
    ],
)
def test_the_webhook_secret_must_be_real_in_production(environment: str, secret: str | None, accepted: bool) -> None:
    fields: dict[str, Any] = {"environment": environment}
    if secret is not None:
        fields["webhook_secret"] = secret
    if accepted:
        AlarmSettings(**fields)
    else:
        with pytest.raises(ValueError, match="webhook_secret"):
            AlarmSettings(**fields)


class Hanging:
    """A channel stuck mid-send, like a process killed while talking to the SMTP server."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, message: Outgoing) -> DeliveryResult:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_restart_mid_delivery_loses_no_notification(
    service: Components, engine: AsyncEngine, smtp: Any
) -> None:
    _, mailbox = smtp
    estate, meter, address = f"estate-{uid()}", f"m-{uid()}", f"restart-{uid()}@example.com"
    await service.evaluator.put_targets([Target(meter_id=meter, estate=estate)])
    await service.notifier.subscribe(_staff(estate, "email", address))
    await raise_alarm(service, meter, "water_leak", AlarmSeverity.MAJOR)
    # The first instance claims the notification and dies while sending it.
    hanging = Hanging()
    dying = Notifier(engine, Channels({"email": hanging}), lease=timedelta(seconds=60))
    attempt = asyncio.create_task(dying.deliver_due())
    await asyncio.wait_for(hanging.started.wait(), 10)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    (alarm,) = await service.alarms.alarms(meter, None, None, 10)
    (claimed,) = await service.notifier.log(alarm["alarm_id"], None, None, 10)
    assert (claimed["status"], claimed["attempts"]) == ("pending", 0)
    # The restarted instance leaves it alone while the lease holds, then delivers it.
    await service.notifier.deliver_due()
    assert mailbox.to(address) == []
    later = datetime.now(UTC) + timedelta(seconds=61)
    offline = MqttLink("mqtt://127.0.0.1:1", service="alarm", instance="restarted")
    async with httpx.AsyncClient() as http:
        restarted = compose(
            AlarmSettings(environment="test", smtp_host="127.0.0.1", smtp_port=smtp[0].port),
            engine,
            Outbox(engine, offline, "alarm"),
            offline,
            http,
            clock=lambda: later,
        )
        await restarted.notifier.deliver_due()
    (delivered,) = await service.notifier.log(alarm["alarm_id"], None, None, 10)
    assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)
    assert len(mailbox.to(address)) == 1


def test_every_alarm_type_is_named_in_both_languages() -> None:
    raised = {s.rule.slot for s in default_rules()} - {CONNECTIVITY}
    raised |= {GATEWAY_OFFLINE, METER_OFFLINE, BALANCE_LOW, BALANCE_EXHAUSTED, COMMAND_FAILED}
    assert sorted(raised - set(TYPE_NAMES)) == []
    assert all(zh and en and zh != en for zh, en in TYPE_NAMES.values())
