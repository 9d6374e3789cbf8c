"""Effectively-once delivery against a real broker and PostgreSQL: a message is acknowledged only
after its work is done, so one whose handler never finished comes back; transient failures are
retried in place; what cannot be processed is parked as a dead letter, never dropped, and can be
replayed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack.pytest_plugin import balance_event, eventually
from shuidian_kit.db import create_engine
from shuidian_kit.deadletters import DeadLetters
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox, outbox_ddl
from shuidian_kit.retry import is_transient
from shuidian_kit.supervisor import Supervisor
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, DeadLetterParked

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    supervisor = Supervisor("test")
    supervisor.add("mqtt", link.run)
    async with supervisor:
        await link.wait_connected(10)
        yield


@pytest.fixture
async def dead_letters(database_url: str) -> AsyncIterator[tuple[AsyncEngine, DeadLetters, str]]:
    schema = f"kit_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(text(outbox_ddl(schema)))
    # The notice of each parked message is only queued here: this outbox's relay is never started.
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="kit-test", instance="t"), schema)
    letters = DeadLetters(engine, schema, "kit-test", instance="t", outbox=outbox)
    await letters.create_table()
    try:
        yield engine, letters, schema
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


async def until(condition: Callable[[], bool], what: str = "the messages handled") -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, what, timeout=15)


async def test_a_message_whose_handler_did_not_finish_is_delivered_again(mqtt_url: str) -> None:
    """The consumer dies while handling: the broker still holds the message for its persistent
    session and delivers it again. Acknowledged on receipt, it would be gone."""
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    instance = f"redeliver-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()
    handled: list[int] = []

    async def stuck(message: BalanceEvent, _topic: str) -> None:
        started.set()
        await asyncio.Event().wait()  # dies before the work commits

    async def works(message: BalanceEvent, _topic: str) -> None:
        handled.append(message.sequence)

    first = MqttLink(mqtt_url, service="kit-test", instance=instance, clean_session=False)
    first.subscribe(topic, BalanceEvent, stuck)
    async with running(first):
        await first.publish(topic, balance_event(account, 1))
        await asyncio.wait_for(started.wait(), 10)
    second = MqttLink(mqtt_url, service="kit-test", instance=instance, clean_session=False)
    second.subscribe(topic, BalanceEvent, works)
    try:
        async with running(second):
            await until(lambda: handled == [1])
    finally:
        # Leave no persistent session behind on a shared broker.
        cleanup = MqttLink(mqtt_url, service="kit-test", instance=instance, clean_session=True)
        async with running(cleanup):
            pass
    assert handled == [1]


async def test_transient_failures_are_retried_in_order_until_they_pass(mqtt_url: str) -> None:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    calls: list[int] = []
    handled: list[int] = []

    async def flaky(message: BalanceEvent, _topic: str) -> None:
        calls.append(message.sequence)
        if message.sequence == 1 and calls.count(1) <= 4:  # more tries than a permanent error gets
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database is down"))
        handled.append(message.sequence)

    link = MqttLink(mqtt_url, service="kit-test", instance=uuid.uuid4().hex[:8])
    link.subscribe(topic, BalanceEvent, flaky)
    async with running(link):
        for sequence in (1, 2):
            await link.publish(topic, balance_event(account, sequence))
        await until(lambda: handled == [1, 2])
    assert calls == [1, 1, 1, 1, 1, 2]


async def test_poison_messages_are_parked_acknowledged_announced_and_replayable(
    mqtt_url: str, dead_letters: tuple[AsyncEngine, DeadLetters, str]
) -> None:
    engine, letters, schema = dead_letters
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    handled: list[int] = []
    broken = True

    async def handler(message: BalanceEvent, _topic: str) -> None:
        if message.sequence == 2 and broken:
            raise ValueError("a bug this message trips")
        handled.append(message.sequence)

    link = MqttLink(mqtt_url, service="kit-test", instance=uuid.uuid4().hex[:8], handler_attempts=2)
    link.dead_letters = letters
    link.subscribe(topic, BalanceEvent, handler)
    async with running(link):
        await link.publish(topic, b"not json")
        await link.publish(topic, balance_event(account, 2))
        await link.publish(topic, balance_event(account, 3))
        await until(lambda: handled == [3])
        parked = await letters.list(pending_only=True, limit=10)
    assert sorted(letter.reason for letter in parked) == ["handler_failed", "invalid_payload"]
    async with engine.connect() as conn:  # each one announced, for alarm to raise an operator alarm
        notices = [
            DeadLetterParked.model_validate_json(bytes(row.payload))
            for row in await conn.execute(
                text(f"SELECT payload FROM {schema}.outbox WHERE topic = :t"), {"t": topics.dead_letters("kit-test")}
            )
        ]
    assert sorted(n.letter_id for n in notices) == sorted(letter.id for letter in parked)
    failed = next(letter for letter in parked if letter.reason == "handler_failed")
    assert failed.attempts == 2
    assert "a bug this message trips" in failed.error
    assert failed.topic == topic

    broken = False  # the cause is fixed: the parked message goes through its handler again
    await link.replay(failed)
    await letters.mark_replayed(failed.id)
    assert handled == [3, 2]
    assert [letter.id for letter in await letters.list(pending_only=True, limit=10)] == [
        letter.id for letter in parked if letter.reason == "invalid_payload"
    ]


async def test_a_pipelined_handler_is_acknowledged_when_its_work_completes(
    mqtt_url: str, dead_letters: tuple[AsyncEngine, DeadLetters, str]
) -> None:
    """A handler that hands its message on (billing's lanes) returns a future: the dispatcher goes on
    with the next message at once; a future that fails parks its message."""
    _, letters, _ = dead_letters
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    pending: dict[int, asyncio.Future[None]] = {}

    async def hand_on(message: BalanceEvent, _topic: str) -> asyncio.Future[None]:
        pending[message.sequence] = asyncio.get_running_loop().create_future()
        return pending[message.sequence]

    link = MqttLink(mqtt_url, service="kit-test", instance=uuid.uuid4().hex[:8])
    link.dead_letters = letters
    link.subscribe(topic, BalanceEvent, hand_on)
    async with running(link):
        for sequence in (1, 2, 3):
            await link.publish(topic, balance_event(account, sequence))
        await until(lambda: sorted(pending) == [1, 2, 3])  # none waited for the one before
        pending[2].set_exception(ValueError("cannot be billed"))
        pending[1].set_result(None)
        pending[3].set_result(None)
        await until(lambda: len(link._settling) == 0)
        parked = await letters.list(pending_only=True, limit=10)
    assert [(letter.reason, letter.topic) for letter in parked] == [("handler_failed", topic)]
    assert '"sequence":2' in parked[0].payload.decode()


def test_transient_errors_are_told_from_bugs() -> None:
    assert is_transient(OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionRefusedError()
    assert is_transient(wrapped)

    class Deadlock(Exception):
        sqlstate = "40P01"

    assert is_transient(Deadlock())
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(KeyError("meter"))

    class Unique(Exception):
        sqlstate = "23505"

    assert not is_transient(Unique())
