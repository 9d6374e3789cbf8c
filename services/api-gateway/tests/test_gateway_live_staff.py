"""The staff live stream (`/v1/live`, server-sent events) over a real socket, fed from the real broker:
an estate manager receives the meter states, command updates and results, balance events and alarms
of their own estate and never another estate's; all-estates roles receive every estate's; each kind
needs its action; `estate=` narrows a stream and cannot widen one."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from shuidian_gateway.adapters.live import StaffHub
from shuidian_gateway.testing import Harness, alarm_event, balance_event, gateway_harness, meter_state
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import (
    AlarmEvent,
    BalanceEvent,
    CommandKind,
    CommandOrigin,
    CommandResult,
    CommandState,
    CommandStatus,
    CommandUpdate,
    Message,
    MeterRef,
    Utility,
)

pytestmark = pytest.mark.integration
HEARTBEAT = 0.3
# The fake alarm service knows these alarms: household A's (estate E1) and household B's (estate E2).
ALARM_E1 = uuid.UUID("11111111-1111-4111-8111-111111111111")
ALARM_E2 = uuid.UUID("22222222-2222-4222-8222-222222222222")


@dataclass
class Event:
    event: str | None = None
    id: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


class Stream:
    """One open event stream, parsed as a browser would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, *, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            event = Event()
            async for line in self._lines:
                if line == "":
                    if event.data is not None or event.event is not None:
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    self.comments.append(value)
                elif name == "data":
                    event.data = json.loads(value)
                elif name == "event":
                    event.event = value
                elif name == "id":
                    event.id = value
            raise EOFError("the stream ended")

    async def drain(self, seconds: float) -> list[Event]:
        """Every event that arrives within `seconds`."""
        got: list[Event] = []
        try:
            while True:
                got.append(await self.next(timeout=seconds))
        except TimeoutError:
            return got


@asynccontextmanager
async def _stream(gw: Harness, who: str, **params: Any) -> AsyncIterator[Stream]:
    async with (
        gw.client(who, timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream("GET", "/v1/live", params=params) as response,
    ):
        yield Stream(response)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url, live_heartbeat_seconds=HEARTBEAT) as harness:
        async with harness.client() as client, asyncio.timeout(20):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
        yield harness


async def _publish(mqtt_url: str, messages: list[tuple[str, Message]]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, message in messages:
            await client.publish(topic, message.model_dump_json().encode(), qos=1)


def _update(meter_id: str) -> CommandUpdate:
    return CommandUpdate(
        source="test",
        command_id=uuid.uuid4(),
        meter_id=meter_id,
        kind=CommandKind.TRIP,
        state=CommandState.SENT,
        origin=CommandOrigin.OPERATOR,
    )


def _result(meter_id: str) -> CommandResult:
    return CommandResult(
        source="test", command_id=uuid.uuid4(), meter_id=meter_id, kind=CommandKind.TRIP, status=CommandStatus.CONFIRMED
    )


def _alarm(alarm_id: uuid.UUID, source_id: str) -> AlarmEvent:
    return alarm_event(source_id).model_copy(update={"alarm_id": alarm_id})


def _balance(account_id: str, meter_id: str | None) -> BalanceEvent:
    event = balance_event(account_id)
    meters = (MeterRef(meter_id=meter_id, utility=Utility.ELECTRICITY),) if meter_id else ()
    return event.model_copy(update={"meters": meters})


def _estate_events(household: str) -> list[tuple[str, Message]]:
    """One message of every kind about household A (estate E1) or B (estate E2)."""
    meter, account, alarm_id = {"A": ("M-A", "A-A", ALARM_E1), "B": ("M-B", "A-B", ALARM_E2)}[household]
    return [
        (topics.meter_state(meter), meter_state(meter)),
        (topics.command_update(meter), _update(meter)),
        (topics.command_result(meter), _result(meter)),
        (topics.balance(account), _balance(account, meter)),  # matched through its meter
        (topics.balance(account), _balance(account, None)),  # no meter: its account's estate is asked
        (topics.alarm("balance_exhausted"), _alarm(alarm_id, account)),  # the alarm's estate is asked
    ]


def _ids(events: list[Event]) -> list[str]:
    return [str(e.data["message_id"]) for e in events]


async def test_an_estate_manager_receives_their_estates_events_and_never_another_estates(
    gw: Harness, mqtt_url: str
) -> None:
    theirs, mine = _estate_events("B"), _estate_events("A")
    async with _stream(gw, "manager_e1") as manager, _stream(gw, "admin") as admin:
        assert manager.response.status_code == 200
        assert manager.response.headers["content-type"].startswith("text/event-stream")
        ready = await manager.next()
        assert (ready.event, ready.data["estates"]) == ("ready", ["E1"])
        assert set(ready.data["kinds"]) == {"meter_state", "balance", "alarm", "command", "command_result"}
        assert (await admin.next()).data["estates"] is None
        # E2's first: if the filter leaked, the manager would see them before E1's.
        await _publish(mqtt_url, theirs + mine)
        got = [await manager.next() for _ in mine]
        everything = [await admin.next() for _ in theirs + mine]
        late = await manager.drain(HEARTBEAT * 3)
    assert [e.event for e in got] == ["meter_state", "command", "command_result", "balance", "balance", "alarm"]
    assert _ids(got) == [str(m.message_id) for _, m in mine]
    assert late == []  # and nothing of E2's after them
    assert sorted(_ids(everything)) == sorted(str(m.message_id) for _, m in theirs + mine)


async def test_estate_narrows_a_stream_and_cannot_widen_one(gw: Harness, mqtt_url: str) -> None:
    async with _stream(gw, "manager_e1", estate="E2") as refused:
        body = json.loads(await refused.response.aread())
    assert (refused.response.status_code, body["code"]) == (403, "forbidden")
    async with _stream(gw, "admin", estate="E2", kind="meter_state") as narrowed:
        ready = await narrowed.next()
        await _publish(
            mqtt_url,
            [(topics.meter_state("M-A"), meter_state("M-A")), (topics.meter_state("M-B"), meter_state("M-B"))],
        )
        got = await narrowed.drain(HEARTBEAT * 4)
    assert ready.data == {"kinds": ["meter_state"], "estates": ["E2"]}
    assert [e.data["meter_id"] for e in got] == ["M-B"]


async def test_each_kind_needs_its_action(gw: Harness, mqtt_url: str) -> None:
    async with gw.client("tenant_a") as tenant:
        assert (await tenant.get("/v1/live")).status_code == 403  # tenants have /v1/me/live
    async with gw.client() as anonymous:
        assert (await anonymous.get("/v1/live")).status_code == 401
    async with _stream(gw, "cashier", kind="alarm") as refused:
        body = json.loads(await refused.response.aread())
    assert refused.response.status_code == 403
    assert "alarms:read" in body["detail"]
    # A cashier may read commands and accounts, not devices or alarms: those kinds are not sent.
    async with _stream(gw, "cashier") as cashier:
        ready = await cashier.next()
        await _publish(mqtt_url, _estate_events("A"))
        got = await cashier.drain(HEARTBEAT * 4)
    assert sorted(ready.data["kinds"]) == ["balance", "command", "command_result"]
    assert sorted({e.event or "" for e in got}) == ["balance", "command", "command_result"]


async def test_an_idle_stream_gets_heartbeats_and_the_hub_forgets_closed_streams(gw: Harness) -> None:
    hub = gw.app.state.container.staff_live
    assert isinstance(hub, StaffHub)
    await _no_streams(hub)  # the earlier tests' streams are closed: the hub may still be letting them go
    async with _stream(gw, "maintenance", kind="alarm") as stream:
        await stream.next()
        assert hub.clients == 1
        assert await stream.drain(HEARTBEAT * 4) == []
    assert stream.comments.count("heartbeat") >= 2
    await _no_streams(hub)


async def _no_streams(hub: StaffHub) -> None:
    async with asyncio.timeout(5):
        while hub.clients:
            await asyncio.sleep(0.05)


def test_the_stream_is_documented_for_staff() -> None:
    from shuidian_gateway.app import create_app
    from shuidian_gateway.settings import GatewaySettings

    operation = create_app(GatewaySettings(environment="dev")).openapi()["paths"]["/v1/live"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert operation["x-required-actions"] == ["accounts:read", "alarms:read", "commands:read", "devices:read"]
    assert {p["name"] for p in operation["parameters"]} == {"kind", "estate"}
