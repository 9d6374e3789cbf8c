"""The test infrastructure itself: a real database and a real broker answer."""

from __future__ import annotations

import uuid

import aiomqtt
import asyncpg
import pytest

from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics

pytestmark = pytest.mark.integration


async def test_session_database_is_its_own_and_writable(database_url: str) -> None:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("shuidian_test_")
        await conn.execute("CREATE TEMP TABLE probe (v int)")
        await conn.execute("INSERT INTO probe VALUES (42)")
        assert await conn.fetchval("SELECT v FROM probe") == 42
    finally:
        await conn.close()


async def test_broker_round_trips_a_qos1_message(mqtt_url: str) -> None:
    address = BrokerAddress.parse(mqtt_url)
    topic = topics.service_status("devstack-test", uuid.uuid4().hex)
    async with aiomqtt.Client(address.host, address.port) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"ping", qos=1)
        async for message in client.messages:
            assert message.payload == b"ping"
            break
