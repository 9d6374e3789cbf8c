"""The runtime kit against a real broker and PostgreSQL: bad input never kills a listener, the
outbox publishes only committed events, in order, and keeps them while the broker is away."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import balance_event
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox, outbox_ddl
from shuidian_kit.supervisor import Supervisor
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent

pytestmark = pytest.mark.integration


async def _depth(engine: AsyncEngine, schema: str) -> int:
    async with engine.connect() as conn:
        count: int = (await conn.execute(text(f'SELECT count(*) FROM "{schema}".outbox'))).scalar_one()
        return count


@contextlib.asynccontextmanager
async def running(link: MqttLink, *extra: tuple[str, object]) -> AsyncIterator[None]:
    supervisor = Supervisor("test")
    supervisor.add("mqtt", link.run)
    for name, loop in extra:
        supervisor.add(name, loop)  # type: ignore[arg-type]
    async with supervisor:
        await link.wait_connected(10)
        yield


async def test_invalid_payloads_and_failing_handlers_do_not_stop_the_listener(mqtt_url: str) -> None:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    received: list[int] = []

    async def handler(event: BalanceEvent, _topic: str) -> None:
        if event.sequence == 2:
            raise RuntimeError("handler bug")
        received.append(event.sequence)

    link = MqttLink(mqtt_url, service="kit-test", instance=uuid.uuid4().hex[:8])
    link.subscribe(topic, BalanceEvent, handler)
    async with running(link):
        for payload in (
            b"not json",
            b'{"account_id": "x"}',
            balance_event(account, 1).model_dump_json().encode(),
            balance_event(account, 2).model_dump_json().encode(),
            b"\xff\xfe",
            balance_event(account, 3).model_dump_json().encode().replace(b'"1.00"', b"1.0"),  # float money
            balance_event(account, 4).model_dump_json().encode(),
        ):
            await link.publish(topic, payload)
        async with asyncio.timeout(10):
            while received != [1, 4]:
                await asyncio.sleep(0.02)
    assert received == [1, 4]


async def test_outbox_publishes_committed_events_in_order_and_drops_rolled_back_ones(
    database_url: str, mqtt_url: str
) -> None:
    schema = f"kit_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(text(outbox_ddl(schema)))
    account = f"acc-{uuid.uuid4().hex[:8]}"
    link = MqttLink(mqtt_url, service="kit-outbox", instance=uuid.uuid4().hex[:8])
    outbox = Outbox(engine, link, schema, batch=7)
    address = link.address
    try:
        async with aiomqtt.Client(address.host, address.port) as listener:
            await listener.subscribe(topics.balance(account), qos=1)
            async with engine.begin() as conn:
                for seq in range(1, 21):
                    await outbox.add(conn, topics.balance(account), balance_event(account, seq))
            with contextlib.suppress(RuntimeError):
                async with engine.begin() as conn:
                    await outbox.add(conn, topics.balance(account), balance_event(account, 999))
                    raise RuntimeError("roll back")
            async with running(link, ("outbox", outbox.run)):
                outbox.notify()
                seen: list[int] = []
                async with asyncio.timeout(15):
                    async for message in listener.messages:
                        seen.append(BalanceEvent.model_validate_json(message.payload).sequence)
                        if len(seen) == 20:
                            break
                # Rows go once their publication is acknowledged (at least once: a crash in
                # between republishes, and consumers recognise duplicates by id or sequence).
                async with asyncio.timeout(5):
                    while await _depth(engine, schema):
                        await asyncio.sleep(0.02)
            assert seen == list(range(1, 21))
    finally:
        await engine.dispose()


class SlowLink(MqttLink):
    """A replica whose broker connection is slow: each publish takes a while to be acknowledged."""

    async def publish(
        self, topic: str, message: BaseModel | bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        await asyncio.sleep(0.05)
        await super().publish(topic, message, qos=qos, retain=retain, timeout=timeout)


async def test_two_replicas_draining_one_outbox_publish_in_order(database_url: str, mqtt_url: str) -> None:
    schema = f"kit_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(text(outbox_ddl(schema)))
    account = f"acc-{uuid.uuid4().hex[:8]}"
    slow = SlowLink(mqtt_url, service="kit-outbox", instance=uuid.uuid4().hex[:8])
    fast = MqttLink(mqtt_url, service="kit-outbox", instance=uuid.uuid4().hex[:8])
    replicas = [Outbox(engine, slow, schema, batch=3), Outbox(engine, fast, schema, batch=3)]
    address = fast.address
    try:
        async with aiomqtt.Client(address.host, address.port) as listener:
            await listener.subscribe(topics.balance(account), qos=1)
            async with engine.begin() as conn:
                for seq in range(1, 31):
                    await replicas[0].add(conn, topics.balance(account), balance_event(account, seq))
            assert await replicas[1].backlog(10) == 10
            async with running(slow), running(fast, *((f"outbox-{i}", o.run) for i, o in enumerate(replicas))):
                for outbox in replicas:
                    outbox.notify()
                seen: list[int] = []
                async with asyncio.timeout(20):
                    async for message in listener.messages:
                        assert isinstance(message.payload, bytes)
                        seen.append(BalanceEvent.model_validate_json(message.payload).sequence)
                        if len(seen) == 30:
                            break
                async with asyncio.timeout(5):
                    while await replicas[0].backlog(10):
                        await asyncio.sleep(0.02)
            # Without one drainer at a time the fast replica publishes the next batch while the slow
            # one still sends the first: a subscriber sees them interleaved.
            assert seen == list(range(1, 31))
    finally:
        await engine.dispose()


async def test_outbox_keeps_events_while_the_broker_is_down_and_delivers_after(
    database_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    port = infra.free_port()
    schema = f"kit_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(text(outbox_ddl(schema)))
    account = f"acc-{uuid.uuid4().hex[:8]}"
    link = MqttLink(
        f"mqtt://127.0.0.1:{port}", service="kit-outage", instance="t", backoff_initial=0.05, backoff_max=0.2
    )
    outbox = Outbox(engine, link, schema)
    supervisor = Supervisor("outage")
    supervisor.add("mqtt", link.run)
    supervisor.add("outbox", outbox.run)
    try:
        async with supervisor:
            async with engine.begin() as conn:
                for seq in range(1, 6):
                    await outbox.add(conn, topics.balance(account), balance_event(account, seq))
            outbox.notify()
            await asyncio.sleep(0.5)  # no broker: nothing can go out, nothing may be lost
            assert await _depth(engine, schema) == 5
            broker = infra.Broker(tmp_path / "broker", port=port)
            broker.start()
            try:
                async with aiomqtt.Client("127.0.0.1", port) as listener:
                    await listener.subscribe(topics.balance(account), qos=1)
                    outbox.notify()
                    seen: list[int] = []
                    async with asyncio.timeout(20):
                        async for message in listener.messages:
                            seen.append(BalanceEvent.model_validate_json(message.payload).sequence)
                            if len(seen) == 5:
                                break
                assert seen == [1, 2, 3, 4, 5]
            finally:
                broker.stop()
    finally:
        await engine.dispose()


async def test_migrations_are_idempotent_and_create_the_schema(database_url: str) -> None:
    from importlib.resources import files

    from alembic.script import ScriptDirectory

    engine = create_engine(database_url)
    try:
        location = str(files("shuidian_alarm") / "migrations")
        await asyncio.gather(upgrade(engine, "alarm", location), upgrade(engine, "alarm", location))
        await upgrade(engine, "alarm", location)
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alarm.alembic_version"))).scalars().all()
        assert sorted(versions) == sorted(ScriptDirectory(location).get_heads())
    finally:
        await engine.dispose()


async def test_supervisor_reports_death_of_a_loop() -> None:
    async def crashes() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor("t")
    supervisor.add("crash", crashes)
    supervisor.add("forever", forever)
    async with supervisor:
        assert supervisor.alive
        await asyncio.sleep(0.1)
        assert not supervisor.alive


async def test_an_older_release_starts_on_a_schema_a_newer_one_migrated(pg_server_url: str) -> None:
    # A rolling upgrade: the new release migrated, then an old replica restarts. It must run, not crash-loop.
    from importlib.resources import files

    name = f"kit_ahead_{uuid.uuid4().hex[:8]}"
    engine = create_engine(await infra.create_database(pg_server_url, name, exist_ok=False))
    try:
        location = str(files("shuidian_alarm") / "migrations")
        await upgrade(engine, "alarm", location)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alarm.alembic_version SET version_num = '9999_of_a_newer_release'"))
        await upgrade(engine, "alarm", location)
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alarm.alembic_version"))).scalars().all()
        assert versions == ["9999_of_a_newer_release"]
    finally:
        await engine.dispose()
        await infra.drop_database(pg_server_url, name)
