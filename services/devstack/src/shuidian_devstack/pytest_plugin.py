"""Pytest fixtures for real infrastructure: PostgreSQL and an MQTT broker.

Uses `DATABASE_URL` / `MQTT_URL` when set (CI points them at its PostgreSQL and Mosquitto);
otherwise starts the embedded PostgreSQL wheel and an embedded broker for the session.
Each test session gets its own fresh database, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest
import pytest_asyncio
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack import infra
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    # One random service-token key per test run (never the published dev default), unless the environment
    # names one: every app a test builds and every signed test client read it, and so do the processes
    # tests start, which inherit the environment.
    os.environ.setdefault("SERVICE_TOKEN_SECRET", secrets.token_urlsafe(48))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="shuidian-pg-"))
    try:
        yield infra.embedded_postgres(data_dir)
    finally:
        infra.stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_database(pg_server_url: str, prefix: str = "shuidian_test") -> AsyncIterator[str]:
    """A database of its own, dropped afterwards: for a stack whose data must not meet the other tests' (the
    tariffs every household shares, the gateway's sign-in limits per address)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        yield url
    finally:
        await infra.drop_database(pg_server_url, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    async with private_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    url = os.environ.get("MQTT_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="shuidian-mqtt-"))
    broker = infra.Broker(data_dir)
    try:
        yield broker.start()
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def migrated_engine(database_url: str, package: str, schema: str) -> AsyncEngine:
    """An engine on the session database with `package`'s schema migrated to head."""
    from importlib.resources import files

    engine = create_engine(database_url, pool_size=5)
    await upgrade(engine, schema, str(files(package) / "migrations"))
    return engine


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Await `probe` every `interval` until it returns something truthy, and return that; fail the test
    with `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not (result := await probe()):
                await asyncio.sleep(interval)
            return result
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def balance_event(account: str, sequence: int) -> BalanceEvent:
    """A plain balance event (level ok) of `account`: the message the kit's delivery tests send around."""
    return BalanceEvent(
        source="kit-test",
        account_id=account,
        kind=BalanceEventKind.CHANGED,
        level=BalanceLevel.OK,
        balance=Decimal("1.00"),
        sequence=sequence,
        meters=(),
    )


async def publish(mqtt_url: str, *messages: tuple[str, BaseModel | bytes], retain: bool = False) -> None:
    """Publish at QoS 1, in order over one connection (the broker keeps one publisher's order); bytes go as
    they are (b"" with `retain` clears a retained message)."""
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        for topic, message in messages:
            payload = message if isinstance(message, bytes) else message.model_dump_json().encode()
            await client.publish(topic, payload, qos=1, retain=retain)
