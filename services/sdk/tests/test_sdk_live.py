"""The SDK's live event iterator against a running gateway (real socket) fed from the real broker:
only the tenant's own events, resumption with Last-Event-ID, reconnection after the stream ends,
typed refusals, and the event-stream parser on hostile input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from shuidian_gateway.testing import PASSWORD, Harness, gateway_harness
from shuidian_kit.mqtt import BrokerAddress
from shuidian_sdk import AsyncShuidianClient, LiveEvent, PermissionDenied
from shuidian_sdk.live import parse_events
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        async with harness.client() as client, asyncio.timeout(20):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
        yield harness


def _balance(account_id: str, sequence: int) -> BalanceEvent:
    return BalanceEvent(
        source="test",
        account_id=account_id,
        kind=BalanceEventKind.LOW_2,
        level=BalanceLevel.LOW_2,
        balance=Decimal("2.00"),
        sequence=sequence,
        meters=(),
    )


async def _publish(mqtt_url: str, messages: list[BalanceEvent]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        for message in messages:
            await client.publish(topics.balance(message.account_id), message.model_dump_json().encode(), qos=1)


async def _next(stream: AsyncGenerator[LiveEvent, None]) -> LiveEvent:
    async with asyncio.timeout(10):
        return await anext(stream)


async def test_a_tenant_iterates_their_own_live_events_and_resumes(gw: Harness, mqtt_url: str) -> None:
    async with AsyncShuidianClient(gw.url) as client:
        await client.login(gw.username("tenant_a"), PASSWORD)
        stream = client.live()
        ready = await _next(stream)
        theirs, mine = _balance("A-B", 1), _balance("A-A", 1)
        await _publish(mqtt_url, [theirs, mine])
        event = await _next(stream)
        await stream.aclose()
        missed = _balance("A-A", 2)
        await _publish(mqtt_url, [missed])
        await asyncio.sleep(0.5)  # delivered to the gateway while nobody listens
        resumed = client.live(last_event_id=event.id)
        again = await _next(resumed)
        replayed = await _next(resumed)
        await resumed.aclose()
    assert (ready.event, ready.data) == ("ready", {"tenant_id": "T-A", "resumed": False})
    assert (event.event, event.data["message_id"]) == ("balance", str(mine.message_id))
    assert (again.event, again.data["resumed"]) == ("ready", True)
    assert replayed.data["message_id"] == str(missed.message_id)


async def test_the_iterator_reconnects_when_the_gateway_ends_the_stream(gw: Harness, mqtt_url: str) -> None:
    hub = gw.app.state.container.live
    async with AsyncShuidianClient(gw.url) as client:
        await client.login(gw.username("tenant_a"), PASSWORD)
        stream = client.live()
        first = await _next(stream)
        for live_client in list(hub._clients):  # what shutdown does to this one stream
            live_client.offer(None)
        second = await _next(stream)  # after the server's retry delay, with Last-Event-ID
        await stream.aclose()
    assert (first.event, second.event) == ("ready", "ready")
    assert second.data["resumed"] is True
    assert second.id == first.id


async def test_refusals_raise_typed_errors(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url) as staff:
        await staff.login(gw.username("cashier"), PASSWORD)
        with pytest.raises(PermissionDenied):
            await _next(staff.live())


async def _lines(text: str) -> AsyncIterator[str]:
    for line in text.splitlines():  # as httpx's aiter_lines: no empty line for the final newline
        yield line


async def test_the_parser_follows_the_event_stream_rules() -> None:
    raw = (
        ": heartbeat\n\n"
        "retry: 1500\n\n"
        'event: balance\nid: e-1\ndata: {"a":\ndata: 1}\n\n'  # data split over two lines
        "id: bad\0id\ndata: {}\n\n"  # an id with NUL is ignored
        "retry: soon\ndata: [1]\n\n"
        "event: never-finished\ndata: {}\n"  # no blank line: not dispatched
    )
    got: list[tuple[Any, Any]] = [(e, r) async for e, r in parse_events(_lines(raw))]
    assert got == [
        (None, 1500),
        (LiveEvent("balance", "e-1", {"a": 1}), None),
        (LiveEvent("message", None, {}), None),
        (LiveEvent("message", None, [1]), None),
    ]
