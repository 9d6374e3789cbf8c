"""Webhooks with several gateway replicas on one broker and one database: one delivery per
(subscription, event), a receiver trickling its answer cannot outlast the lease, a replica dying
mid-delivery loses nothing, retries end in a dead letter, old deliveries are pruned by one replica
at a time, and signing secrets are sealed at rest (existing plaintext ones sealed at start-up)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from alembic import command
from alembic.config import Config
from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack import infra
from shuidian_gateway.adapters.webhooks import ATTEMPTS, HOUSEKEEPING_LOCK, QUEUE_SIZE, Webhooks
from shuidian_gateway.domain import security
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import Harness, alarm_event, balance_event, free_port, gateway_harness, serve
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceLevel

pytestmark = pytest.mark.integration

KEY = "webhook-test-key-" + secrets.token_hex(16)
FAST: dict[str, Any] = {
    "webhook_secret_key": SecretStr(KEY),
    "webhook_backoff_seconds": 0.05,
    "webhook_poll_seconds": 0.1,
    "webhook_timeout_seconds": 3.0,
    "webhook_lease_seconds": 4.0,
    "webhook_allowed_networks": "127.0.0.1/32",  # the receivers listen on loopback
}


@dataclass
class Receiver:
    """One HTTP receiver: records every request; can answer 500 or hang on the first request."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # message ids answered 2xx
    status: int = 200
    hang_first: bool = False
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> list[str]:
        return [h["shuidian-message-id"] for h, _ in self.requests]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def own_database(pg_server_url: str) -> AsyncIterator[str]:
    """A database of this module's own: deliveries queued here must not reach other modules' gateways."""
    name = f"shuidian_hooks_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        yield url
    finally:
        await infra.drop_database(pg_server_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_database(pg_server_url: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A database for one test whose replicas come and go (the module's pair must not take its deliveries)."""
    name = f"shuidian_hooks_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    engine = create_engine(url, pool_size=2)
    try:
        yield url, engine
    finally:
        await engine.dispose()
        await infra.drop_database(pg_server_url, name)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(own_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(own_database, pool_size=2)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pair(own_database: str, mqtt_url: str) -> AsyncIterator[list[Harness]]:
    """Two gateway replicas on one broker and one database, shared by the tests that keep both running."""
    async with _replicas(own_database, mqtt_url, 2) as replicas:
        yield replicas


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    app = FastAPI()
    port = free_port()
    box = Receiver(f"http://127.0.0.1:{port}/hook")

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        box.requests.append((dict(request.headers), await request.body()))
        if box.hang_first and len(box.requests) == 1:
            box.hanging.set()
            await box.release.wait()
            return Response(status_code=200)  # to a sender that is gone: not an answer anyone read
        if box.status < 300:
            box.answered.append(request.headers["shuidian-message-id"])
        return Response(status_code=box.status)

    async with serve(app, port):
        yield box
    box.release.set()


async def _ready(harness: Harness) -> None:
    async with harness.client() as client, asyncio.timeout(20):
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _replicas(database_url: str, mqtt_url: str, count: int) -> AsyncIterator[list[Harness]]:
    async with contextlib.AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(gateway_harness(database_url, mqtt_url, **FAST)) for _ in range(count)
        ]
        for replica in replicas:
            await _ready(replica)
        yield replicas


async def _publish(mqtt_url: str, messages: list[tuple[str, Any]]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, message in messages:
            await client.publish(topic, message.model_dump_json().encode(), qos=1)


async def _subscribe(replica: Harness, url: str, events: list[str]) -> dict[str, Any]:
    async with replica.client("admin") as admin:
        created = await admin.post("/v1/webhooks", json={"url": url, "events": events})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def _deliveries(engine: AsyncEngine, webhook_id: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            await conn.execute(
                text(
                    "SELECT message_id, state, status, error, attempts, claimed_by, body "
                    "FROM gateway.webhook_deliveries WHERE webhook_id = :w"
                ),
                {"w": uuid.UUID(webhook_id)},
            )
        )


async def _settled(engine: AsyncEngine, webhook_id: str, timeout: float = 20.0) -> list[Any]:
    """The subscription's deliveries once none is pending (the sender records after the receiver answered)."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await _deliveries(engine, webhook_id)
            if all(r.state != "pending" for r in rows):
                return rows
            await asyncio.sleep(0.05)


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_two_replicas_deliver_each_event_exactly_once(
    pair: list[Harness], mqtt_url: str, engine: AsyncEngine, receiver: Receiver
) -> None:
    one = pair[0]
    hook = await _subscribe(one, receiver.url, ["balance", "alarm"])
    events: list[tuple[str, Any]] = []
    for n in range(15):
        events.append((topics.balance(f"A-{n}"), _balance(f"A-{n}", n)))
        events.append((topics.alarm("balance_low"), _alarm(f"A-{n}")))
    await _publish(mqtt_url, events)
    expected = {str(m.message_id) for _, m in events}
    await _until(lambda: expected <= set(receiver.answered))
    await asyncio.sleep(1.0)  # ten poll intervals of both replicas: a second delivery would have come by now
    rows = await _settled(engine, hook["webhook_id"])
    async with one.client("admin") as admin:
        await admin.delete(f"/v1/webhooks/{hook['webhook_id']}")
    counts = Counter(receiver.ids())
    assert set(counts) == expected
    assert set(counts.values()) == {1}, [m for m, c in counts.items() if c > 1]
    assert len(rows) == len(expected)
    assert {r.state for r in rows} == {"delivered"}
    assert {r.attempts for r in rows} == {1}
    assert all(r.body is None for r in rows)  # a delivered body is not kept
    for headers, body in receiver.requests:
        assert security.verify_webhook(hook["secret"], headers["shuidian-signature"], body, now=int(time.time()))


@dataclass
class Attempt:
    message_id: str
    opened: float
    closed: float | None = None
    answered: bool = False  # the whole answer was written before the sender hung up


@dataclass
class Trickler:
    """A raw HTTP receiver whose first answer trickles one byte every `gap` seconds for longer than
    the lease (each byte well inside httpx's per-read timeout); later answers come at once."""

    url: str
    attempts: list[Attempt] = field(default_factory=list)
    gap: float = 0.25
    length: int = 40  # bytes of the slow body: 10 s at 0.25 s a byte


@pytest_asyncio.fixture(loop_scope="session")
async def trickler() -> AsyncIterator[Trickler]:
    box = Trickler("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").lower().split("\r\n")[1:] if ": " in line)
        await reader.readexactly(int(headers["content-length"]))
        attempt = Attempt(headers["shuidian-message-id"], time.monotonic())
        box.attempts.append(attempt)
        try:
            if len(box.attempts) == 1:
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {box.length}\r\n\r\n".encode())
                for _ in range(box.length):
                    await writer.drain()
                    await asyncio.sleep(box.gap)
                    writer.write(b"x")
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                await writer.drain()
            attempt.answered = True
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            attempt.closed = time.monotonic()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    box.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    async with server:
        yield box
        server.close()


async def _closed(attempt: Attempt) -> None:
    """Wait until the receiver noticed the sender hang up (it learns on its next write)."""
    await _until(lambda: attempt.closed is not None, timeout=15)


async def test_a_receiver_trickling_its_answer_does_not_outlast_the_lease(
    pair: list[Harness], mqtt_url: str, engine: AsyncEngine, trickler: Trickler
) -> None:
    timeout, lease = FAST["webhook_timeout_seconds"], FAST["webhook_lease_seconds"]
    assert trickler.gap * trickler.length > 2 * lease  # without a bound on the whole attempt, the lease runs out
    hook = await _subscribe(pair[0], trickler.url, ["alarm"])
    alarm = _alarm("M-13")
    await _publish(mqtt_url, [(topics.alarm("balance_low"), alarm)])
    await _until(lambda: len(trickler.attempts) >= 2, timeout=20)
    [row] = await _settled(engine, hook["webhook_id"])
    first, second = trickler.attempts[:2]
    await _closed(first)
    async with pair[0].client("admin") as admin:
        await admin.delete(f"/v1/webhooks/{hook['webhook_id']}")
    assert {a.message_id for a in trickler.attempts} == {str(alarm.message_id)}
    assert len(trickler.attempts) == 2  # the cut attempt and its retry, not a redelivery racing it
    assert not first.answered  # the sender hung up on the trickle...
    assert first.closed is not None
    assert first.closed - first.opened < timeout + trickler.gap * 4  # ...once the whole attempt took `timeout`
    assert second.opened >= first.closed - trickler.gap * 2  # the retry came after the first was given up
    assert second.answered
    assert (row.state, row.status, row.attempts) == ("delivered", 200, 2)


_balance = functools.partial(balance_event, level=BalanceLevel.LOW_1, balance="9.50")
_alarm = functools.partial(alarm_event, low=True)


def _pruned(state: str) -> float:
    return REGISTRY.get_sample_value("gateway_webhook_deliveries_pruned_total", {"state": state}) or 0.0


async def test_old_deliveries_are_pruned_in_batches_by_one_replica_at_a_time(
    pair: list[Harness], engine: AsyncEngine, receiver: Receiver
) -> None:
    hook = await _subscribe(pair[0], receiver.url, ["alarm"])
    webhook_id = uuid.UUID(hook["webhook_id"])
    ages = {  # (state, age in days) → rows
        ("delivered", 8): 5,
        ("delivered", 6): 2,
        ("dead", 31): 3,
        ("dead", 29): 2,
        ("pending", 40): 1,
    }
    async with engine.begin() as conn:
        for (state, days), count in ages.items():
            for _ in range(count):
                await conn.execute(
                    text(
                        "INSERT INTO gateway.webhook_deliveries (webhook_id, message_id, event, state, attempts, at, "
                        "next_attempt_at, finished_at) VALUES (:w, :m, 'alarm', :s, 1, now() - make_interval(days => :d), "
                        "CASE WHEN :s = 'pending' THEN now() + interval '1 hour' END, "
                        "CASE WHEN :s <> 'pending' THEN now() - make_interval(days => :d) END)"
                    ),
                    {"w": webhook_id, "m": uuid.uuid4(), "s": state, "d": days},
                )
    hooks = pair[0].app.state.container.webhooks
    other = pair[1].app.state.container.webhooks
    before = {state: _pruned(state) for state in ("delivered", "dead")}
    async with engine.connect() as holder:  # another replica's housekeeping is running
        assert (await holder.execute(text(HOUSEKEEPING_LOCK))).scalar_one()
        skipped = await hooks.prune(7, 30, batch=2)
        await holder.rollback()
        await holder.execute(text("SELECT pg_advisory_unlock_all()"))
        await holder.commit()
    pruned = await other.prune(7, 30, batch=2)  # batches of 2: several statements each
    again = await hooks.prune(7, 30, batch=2)
    async with engine.connect() as conn:
        left = Counter(
            (r.state, round(r.days))
            for r in await conn.execute(
                text(
                    "SELECT state, extract(epoch FROM now() - at) / 86400 AS days "
                    "FROM gateway.webhook_deliveries WHERE webhook_id = :w"
                ),
                {"w": webhook_id},
            )
        )
    async with pair[0].client("admin") as admin:
        await admin.delete(f"/v1/webhooks/{webhook_id}")
    assert skipped is None  # the lock was taken: this replica left it to the other
    assert pruned == {"delivered": 5, "dead": 3}
    assert again == {"delivered": 0, "dead": 0}
    assert left == Counter({("delivered", 6): 2, ("dead", 29): 2, ("pending", 40): 1})
    assert _pruned("delivered") - before["delivered"] == 5  # the metric counts them
    assert _pruned("dead") - before["dead"] == 3


async def test_a_replica_dying_mid_delivery_does_not_lose_the_event(
    fresh_database: tuple[str, AsyncEngine], mqtt_url: str, receiver: Receiver
) -> None:
    database_url, engine = fresh_database
    receiver.hang_first = True
    stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
    try:
        replicas = [await s.enter_async_context(gateway_harness(database_url, mqtt_url, **FAST)) for s in stacks]
        for replica in replicas:
            await _ready(replica)
        hook = await _subscribe(replicas[0], receiver.url, ["alarm"])
        alarm = _alarm("M-7")
        await _publish(mqtt_url, [(topics.alarm("balance_low"), alarm)])
        async with asyncio.timeout(15):
            await receiver.hanging.wait()  # one replica is in the middle of the POST
        [claimed] = await _deliveries(engine, hook["webhook_id"])
        dying = next(i for i, r in enumerate(replicas) if r.settings.instance_id == claimed.claimed_by)
        survivor = replicas[1 - dying]
        await stacks[dying].aclose()  # it stops with its delivery unfinished
        receiver.release.set()
        await _until(lambda: str(alarm.message_id) in receiver.answered)
        [row] = await _settled(engine, hook["webhook_id"])
        async with survivor.client("admin") as admin:
            await admin.delete(f"/v1/webhooks/{hook['webhook_id']}")
    finally:
        for stack in stacks:
            await stack.aclose()
    assert (claimed.state, claimed.attempts) == ("pending", 1)
    assert receiver.ids() == [str(alarm.message_id)] * 2  # the abandoned attempt, then the redelivery
    assert receiver.answered == [str(alarm.message_id)]
    assert (row.state, row.status, row.attempts) == ("delivered", 200, 2)
    assert row.claimed_by == survivor.settings.instance_id
    headers, body = receiver.requests[-1]
    assert security.verify_webhook(hook["secret"], headers["shuidian-signature"], body, now=int(time.time()))


async def test_failed_deliveries_are_retried_then_kept_as_a_dead_letter(
    pair: list[Harness], mqtt_url: str, engine: AsyncEngine, receiver: Receiver
) -> None:
    receiver.status = 500
    one = pair[1]
    hook = await _subscribe(one, receiver.url, ["alarm"])
    alarm = _alarm("M-9")
    await _publish(mqtt_url, [(topics.alarm("balance_low"), alarm)])
    await _until(lambda: len(receiver.requests) >= ATTEMPTS)
    await asyncio.sleep(1.0)
    rows = await _settled(engine, hook["webhook_id"])
    async with one.client("admin") as admin:
        await admin.delete(f"/v1/webhooks/{hook['webhook_id']}")
    assert receiver.ids() == [str(alarm.message_id)] * ATTEMPTS  # across both replicas, no more
    [row] = rows
    assert (row.state, row.status, row.attempts, row.error) == ("dead", 500, ATTEMPTS, "HTTP 500")
    assert json.loads(row.body)["message_id"] == str(alarm.message_id)  # the dead letter keeps its body


async def test_secrets_are_sealed_at_rest_and_shown_only_once(
    pair: list[Harness], engine: AsyncEngine, receiver: Receiver
) -> None:
    one = pair[0]
    hook = await _subscribe(one, receiver.url, ["balance"])
    webhook_id = uuid.UUID(hook["webhook_id"])
    async with one.client("admin") as admin:
        read = await admin.get(f"/v1/webhooks/{webhook_id}")
        listed = (await admin.get("/v1/webhooks")).json()["items"]
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT secret, secret_sealed FROM gateway.webhooks WHERE webhook_id = :w"),
                    {"w": webhook_id},
                )
            ).one()
        await admin.delete(f"/v1/webhooks/{webhook_id}")
    assert hook["secret"].startswith("whsec_")
    assert read.status_code == 200
    assert "secret" not in read.json()
    assert hook["secret"] not in read.text
    assert listed
    assert all("secret" not in item for item in listed)
    assert stored.secret is None
    sealed = bytes(stored.secret_sealed)
    assert hook["secret"].encode() not in sealed
    assert security.open_secret(security.sealing_key(KEY), webhook_id, sealed) == hook["secret"]
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(security.SealError):
        security.open_secret(security.sealing_key(KEY), webhook_id, tampered)


async def test_plaintext_secrets_are_sealed_at_start_up(
    fresh_database: tuple[str, AsyncEngine], mqtt_url: str, receiver: Receiver
) -> None:
    database_url, engine = fresh_database
    await upgrade(engine, "gateway", str(files("shuidian_gateway") / "migrations"))
    webhook_id, secret = uuid.uuid4(), "whsec_" + secrets.token_urlsafe(32)
    async with engine.begin() as conn:  # a subscription as an older gateway stored it
        await conn.execute(
            text(
                "INSERT INTO gateway.webhooks (webhook_id, owner, url, events, secret) "
                "VALUES (:w, 'legacy', :u, '{alarm}', :s)"
            ),
            {"w": webhook_id, "u": receiver.url, "s": secret},
        )
    async with _replicas(database_url, mqtt_url, 1) as (one,):
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT secret, secret_sealed FROM gateway.webhooks WHERE webhook_id = :w"), {"w": webhook_id}
                )
            ).one()
        alarm = _alarm("M-11")
        await _publish(mqtt_url, [(topics.alarm("balance_low"), alarm)])
        await _until(lambda: str(alarm.message_id) in receiver.answered)
        async with one.client("admin") as admin:
            assert (await admin.delete(f"/v1/webhooks/{webhook_id}")).status_code == 204
    assert stored.secret is None
    sealed = bytes(stored.secret_sealed)
    assert secret.encode() not in sealed
    assert security.open_secret(security.sealing_key(KEY), webhook_id, sealed) == secret
    with pytest.raises(security.SealError):
        security.open_secret(security.sealing_key(KEY + "x"), webhook_id, sealed)
    with pytest.raises(security.SealError):  # the webhook id is authenticated: no copying onto another row
        security.open_secret(security.sealing_key(KEY), uuid.uuid4(), sealed)
    headers, body = receiver.requests[-1]
    assert security.verify_webhook(secret, headers["shuidian-signature"], body, now=int(time.time()))


def _alembic(connection: Connection, schema: str, target: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(files("shuidian_gateway") / "migrations"))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, target)


async def test_the_migration_keeps_one_logged_delivery_per_event(pg_server_url: str) -> None:
    name = f"shuidian_hooks_mig_{uuid.uuid4().hex[:10]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA gateway"))
            await conn.run_sync(_alembic, "gateway", "0002_identity")
            hook, twice, once = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                text(
                    "INSERT INTO gateway.webhooks (webhook_id, owner, url, events, secret) "
                    "VALUES (:w, 'o', 'https://x.example/', '{alarm}', 'whsec_old')"
                ),
                {"w": hook},
            )
            # Two replicas each delivered `twice` (one failed, one succeeded); `once` failed for good.
            for message, status in ((twice, 500), (twice, 200), (once, 503)):
                await conn.execute(
                    text(
                        "INSERT INTO gateway.webhook_deliveries (webhook_id, message_id, event, status, attempts) "
                        "VALUES (:w, :m, 'alarm', :s, 4)"
                    ),
                    {"w": hook, "m": message, "s": status},
                )
            await conn.run_sync(_alembic, "gateway", "heads")
            rows = {
                r.message_id: (r.state, r.status)
                for r in await conn.execute(text("SELECT message_id, state, status FROM gateway.webhook_deliveries"))
            }
            secret = (await conn.execute(text("SELECT secret FROM gateway.webhooks"))).scalar_one()
    finally:
        await engine.dispose()
        await infra.drop_database(pg_server_url, name)
    assert rows == {twice: ("delivered", 200), once: ("dead", 503)}
    assert secret == "whsec_old"  # sealed by the gateway at start-up, where the key is


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "GATEWAY_WEBHOOK_SECRET_KEY"),  # the dev placeholder outside dev
        ({"webhook_secret_key": SecretStr("short-but-not-placeholder")}, "GATEWAY_WEBHOOK_SECRET_KEY"),
        ({"webhook_lease_seconds": 5.0}, "GATEWAY_WEBHOOK_LEASE_SECONDS"),
    ],
)
def test_settings_refuse_a_weak_key_or_a_lease_shorter_than_a_delivery(overrides: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "environment": "prod",
        "staff_api_key": SecretStr("s" * 40),
        "jwt_secret": SecretStr("j" * 40),
        "webhook_secret_key": SecretStr("w" * 40),
        "webhook_timeout_seconds": 5.0,
    }
    if message == "GATEWAY_WEBHOOK_SECRET_KEY" and not overrides:
        del base["webhook_secret_key"]
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**{**base, **overrides})
    GatewaySettings(**base | {"webhook_secret_key": SecretStr("w" * 40)})  # the same, well configured, is fine


async def test_an_event_is_acknowledged_only_once_its_deliveries_are_committed() -> None:
    """The MQTT handler hands back a future the kit acknowledges on; while the database cannot take
    the deliveries it stays pending (the broker keeps the message), and nothing is dropped when the
    queue is full: the handler waits instead."""
    dead = create_engine("postgresql://nobody@127.0.0.1:1/none")
    topic = topics.alarm("balance_exhausted")
    async with httpx.AsyncClient() as client:
        hooks = Webhooks(dead, client, secret_key="k" * 32, instance="t", poll=0.05)
        runner = asyncio.create_task(hooks.run())
        try:
            first = await hooks.on_message(alarm_event("M-ack"), topic)
            await asyncio.sleep(0.3)  # several failed tries to queue it in PostgreSQL
            assert not first.done()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        full = Webhooks(dead, client, secret_key="k" * 32, instance="t")  # nothing drains its queue
        for i in range(QUEUE_SIZE):
            await full.on_message(alarm_event(f"M-{i}"), topic)
        waiting = asyncio.create_task(full.on_message(alarm_event("M-one-more"), topic))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # back-pressure, not a drop
        waiting.cancel()
    await dead.dispose()
