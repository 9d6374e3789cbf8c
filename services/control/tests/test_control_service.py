"""The control service as it runs (lifespan, real broker, real PostgreSQL, HTTP API): this test plays billing and
the collector on the broker; the control instance is stopped and replaced mid-command."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiomqtt
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, SecretStr

from shuidian_control.app import create_app
from shuidian_control.settings import ControlSettings
from shuidian_devstack import infra
from shuidian_kit.mqtt import BrokerAddress
from shuidian_kit.service import started
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandRequested,
    CommandResult,
    CommandStatus,
    CommandUpdate,
    DeviceState,
    MeterRef,
    RelayState,
    Utility,
)

pytestmark = pytest.mark.integration


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll a (sync or async) probe until it returns something truthy."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(database_url: str, mqtt_url: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = ControlSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:6]}",
        mqtt_clean_session=True,
        tick_seconds=0.1,
        nights_start=None,
        nights_end=None,
        protect_weekends=False,
        protect_holidays=False,
        **options,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        await started(app.state.control.runtime).mqtt.wait_connected(10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://control", auth=infra.service_auth("control", "op-1")
        ) as c:
            yield c


class Collector:
    """Plays the collector (and billing) on the broker: records command requests and updates, publishes answers."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.requests: list[CommandRequested] = []
        self.updates: list[CommandUpdate] = []

    async def listen(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            if message.topic.matches(topics.ALL_METER_COMMANDS):
                self.requests.append(CommandRequested.model_validate_json(payload))
            elif message.topic.matches(topics.ALL_COMMAND_UPDATES):
                self.updates.append(CommandUpdate.model_validate_json(payload))

    async def publish(self, topic: str, message: BaseModel) -> None:
        await self.client.publish(topic, message.model_dump_json().encode(), qos=1)

    def for_meter(self, meter_id: str) -> list[CommandRequested]:
        return [r for r in self.requests if r.meter_id == meter_id]


@contextlib.asynccontextmanager
async def collector(mqtt_url: str) -> AsyncIterator[Collector]:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(
        address.host, address.port, identifier=f"fake-collector-{uuid.uuid4().hex[:6]}"
    ) as client:
        await client.subscribe(topics.ALL_METER_COMMANDS, qos=1)
        await client.subscribe(topics.ALL_COMMAND_UPDATES, qos=1)
        fake = Collector(client)
        task = asyncio.create_task(fake.listen())
        try:
            yield fake
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def exhausted(account: str, meter_id: str, sequence: int) -> BalanceEvent:
    return BalanceEvent(
        source="billing-test",
        account_id=account,
        kind=BalanceEventKind.EXHAUSTED,
        level=BalanceLevel.EXHAUSTED,
        balance=Decimal("-1.00"),
        sequence=sequence,
        meters=(MeterRef(meter_id=meter_id, utility=Utility.ELECTRICITY),),
    )


async def test_a_restart_mid_command_over_the_broker_loses_nothing_and_duplicates_nothing(
    database_url: str, mqtt_url: str
) -> None:
    account, meter_id = f"acc-{uuid.uuid4().hex[:6]}", f"E-{uuid.uuid4().hex[:6]}"
    event = exhausted(account, meter_id, 7)
    async with collector(mqtt_url) as fake:
        async with running(database_url, mqtt_url):
            await fake.publish(topics.balance(account), event)
            (request,) = await eventually(lambda: fake.for_meter(meter_id), "the trip request")
        # Control is gone; the collector executes the trip and answers while no control instance runs… then a new
        # instance starts, billing re-sends the same event, and the answer comes again (QoS 1 redelivery).
        async with running(database_url, mqtt_url) as api:
            await fake.publish(topics.balance(account), event)
            answer = CommandResult(
                source="fake-collector",
                command_id=request.command_id,
                meter_id=meter_id,
                kind=request.kind,
                status=CommandStatus.CONFIRMED,
                relay=RelayState.OPEN,
                request_frame="68 AA 16",
                response_frame="68 9C 16",
                attempt=request.attempt,
            )
            await fake.publish(topics.command_result(meter_id), answer)

            async def confirmed() -> dict[str, Any] | None:
                body: dict[str, Any] = (await api.get(f"/v1/commands/{request.command_id}")).json()
                return body if body.get("state") == "confirmed" else None

            detail = await eventually(confirmed, "the trip to be confirmed")
            assert detail["response_frame"] == "68 9C 16"
            await eventually(
                lambda: any(u.command_id == request.command_id and u.state.value == "confirmed" for u in fake.updates),
                "a CommandUpdate for alarm",
            )
            listed = (await api.get("/v1/commands", params={"meter_id": meter_id})).json()
            assert [c["command_id"] for c in listed] == [str(request.command_id)]
            # The outbox delivers at least once (a stop between publish and commit re-sends the same attempt); the
            # collector runs each (command id, attempt) once, so what counts is that nothing new was created.
            assert {(r.command_id, r.attempt) for r in fake.for_meter(meter_id)} == {(request.command_id, 1)}
            shadow = (await api.get(f"/v1/meters/{meter_id}/shadow")).json()
            assert (shadow["desired_relay"], shadow["reported_relay"]) == ("open", "open")


async def test_after_a_restart_control_has_the_retained_meter_states_without_a_new_report(
    database_url: str, mqtt_url: str
) -> None:
    meter_id = f"E-{uuid.uuid4().hex[:6]}"
    state = DeviceState(
        source="collector-test",
        meter_id=meter_id,
        gateway_id="gw-r",
        online=True,
        relay=RelayState.OPEN,
        keep_power=True,
    )
    async with collector(mqtt_url) as fake:
        async with running(database_url, mqtt_url) as api:
            assert (await api.get(f"/v1/meters/{meter_id}/shadow")).status_code == 404
        # While control is down, the collector publishes the meter's state (retained) and never again.
        await fake.client.publish(topics.meter_state(meter_id), state.model_dump_json().encode(), qos=1, retain=True)
        try:
            # Control comes back and learns the state from the retained message alone.
            async with running(database_url, mqtt_url) as api:

                async def reported() -> dict[str, Any] | None:
                    response = await api.get(f"/v1/meters/{meter_id}/shadow")
                    shadow: dict[str, Any] = response.json()
                    return shadow if response.status_code == 200 else None

                shadow = await eventually(reported, "the retained state in the shadow")
                assert (shadow["reported_relay"], shadow["reported_keep_power"], shadow["online"]) == (
                    "open",
                    True,
                    True,
                )
                assert shadow["gateway_id"] == "gw-r"
        finally:
            await fake.client.publish(topics.meter_state(meter_id), b"", qos=1, retain=True)


async def test_operator_api_batches_queries_and_policies(database_url: str, mqtt_url: str) -> None:
    building = f"B-{uuid.uuid4().hex[:6]}"
    meters = [f"E-{uuid.uuid4().hex[:6]}" for _ in range(5)]
    account = f"acc-{uuid.uuid4().hex[:6]}"
    async with collector(mqtt_url) as fake, running(database_url, mqtt_url) as api:
        # The first meter's household is under 保电 (known to control through a balance event).
        await fake.publish(topics.balance(account), exhausted(account, meters[0], 1))
        await eventually(lambda: fake.for_meter(meters[0]), "the first trip")
        kept = await api.put(f"/v1/keep-power/households/{account}", json={"reason": "medical", "note": "呼吸机"})
        assert kept.status_code == 204, kept.text
        # The meter's own keep-power mode goes on, and the cut supply comes back.
        restore = await eventually(
            lambda: fake.for_meter(meters[0])[1:] if len(fake.for_meter(meters[0])) >= 3 else None, "the restore"
        )
        assert [r.kind for r in restore] == [CommandKind.KEEP_POWER_ON, CommandKind.DIRECT_CLOSE]
        assert (await api.put(f"/v1/buildings/{building}", json={"meters": meters})).status_code == 204
        body = {"building_id": building, "kind": "trip", "reason": "线路检修 maintenance"}
        preview = (await api.post("/v1/batches/preview", json=body)).json()
        assert preview["counts"] == {"issue": 4, "blocked": 1, "skip": 0}
        assert len(fake.for_meter(meters[1])) == 0
        batch = await api.post("/v1/batches", json=body)
        assert batch.status_code == 202, batch.text
        assert batch.json()["counts"]["issue"] == 4
        await eventually(lambda: all(fake.for_meter(m) for m in meters[1:]), "the batch trips")

        # Queries: by building and origin, paged with a cursor; the audit trail names the operator.
        page1 = await api.get("/v1/commands", params={"building_id": building, "origin": "operator", "limit": 3})
        assert len(page1.json()) == 3
        cursor = page1.headers["X-Next-Cursor"]
        page2 = (
            await api.get("/v1/commands", params={"building_id": building, "origin": "operator", "cursor": cursor})
        ).json()
        seen = [c["command_id"] for c in page1.json() + page2]
        assert len(seen) == len(set(seen)) == 6  # four trips, the 保电 restore and keep-power mode on, each once
        trip = next(c for c in page2 + page1.json() if c["kind"] == "trip")
        events = (await api.get(f"/v1/commands/{trip['command_id']}")).json()["events"]
        assert events[0]["actor"] == "op-1"

        # Cancel, then cancelling again is a conflict.
        cancelled = await api.post(f"/v1/commands/{trip['command_id']}/cancel", json={"reason": "wrong building"})
        assert cancelled.json()["state"] == "cancelled"
        again = await api.post(f"/v1/commands/{trip['command_id']}/cancel", json={"reason": "again"})
        assert again.status_code == 409
        assert again.headers["content-type"].startswith("application/problem+json")

        # Estate policy round trip; the operator hold.
        policy = {"nights_start": "23:00:00", "nights_end": "06:30:00", "weekends": False, "restore": "close_allowed"}
        assert (await api.put("/v1/estates/east/policy", json=policy)).status_code == 204
        stored = (await api.get("/v1/estates/east/policy")).json()
        assert (stored["nights_start"], stored["restore"], stored["holidays"]) == ("23:00:00", "close_allowed", True)
        assert (await api.put("/v1/holds/all", json={"reason": "暴雪 blizzard"})).status_code == 204
        assert [h["estate_id"] for h in (await api.get("/v1/holds")).json()] == ["*"]
        assert (await api.delete("/v1/holds/all", params={"reason": "over"})).status_code == 204
        # A one-off schedule as the api-gateway sends it (its command id makes a retry a no-op).
        one_off = {
            "meter_id": meters[1],
            "kind": "time_sync",
            "reason": "月度校时",
            "ttl_seconds": 600,
            "command_id": str(uuid.uuid4()),
            "origin": "operator",
            "run_at": "2030-01-01T02:00:00+08:00",
        }
        created = await api.post("/v1/schedules", json=one_off)
        assert created.status_code == 201, created.text
        assert (await api.post("/v1/schedules", json=one_off)).json()["schedule_id"] == created.json()["schedule_id"]
        log = (await api.get("/v1/policy-log")).json()
        assert {entry["actor"] for entry in log} >= {"op-1"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/commands", {"meter_id": "E-1", "kind": "explode", "reason": "x"}),
        ("post", "/v1/commands", {"meter_id": "../etc", "kind": "trip", "reason": "x"}),
        ("post", "/v1/commands", {"meter_id": "E-1", "kind": "trip", "reason": ""}),
        ("post", "/v1/commands", {"meter_id": "E-1", "kind": "trip", "reason": "x", "ttl_seconds": 1}),
        ("post", "/v1/batches", {"kind": "trip", "reason": "no targets"}),
        ("post", "/v1/batches/preview", {"meters": ["E-1"] * 5001, "kind": "trip", "reason": "x"}),
        ("put", "/v1/estates/e/policy", {"nights_start": "22:00:00", "nights_end": None}),
        ("put", "/v1/estates/e/policy", {"restore": "trip"}),
        ("put", "/v1/keep-power/households/a1", {"reason": "rich"}),
        ("put", "/v1/holds/e", {"reason": "x", "until": "2026-12-01T00:00:00"}),
        ("post", "/v1/schedules", {"name": "n", "kind": "time_sync", "at_local": "25:00"}),
        ("post", "/v1/schedules", {"name": "n", "kind": "time_sync", "at_local": "23:00"}),
        ("post", "/v1/schedules", {"kind": "time_sync", "meter_id": "E-1", "run_at": "2026-12-01T02:00:00"}),
        (
            "post",
            "/v1/schedules",
            {"kind": "time_sync", "meter_id": "E-1", "at_local": "02:00", "run_at": "2026-12-01T02:00:00Z"},
        ),
        (
            "post",
            "/v1/schedules",
            {"kind": "time_sync", "meter_id": "E-1", "at_local": "02:00", "command_id": str(uuid.uuid4())},
        ),
        ("get", "/v1/commands?cursor=bm9wZQ", None),
        ("get", "/v1/commands?since=2026-01-01T00:00:00", None),
        ("get", "/v1/commands?state=lost", None),
        ("delete", "/v1/keep-power/households/a1", None),
        ("get", f"/v1/commands/{uuid.uuid4()}", None),
    ],
)
async def test_bad_requests_get_a_problem_and_change_nothing(
    database_url: str, mqtt_url: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async def requested() -> dict[str, tuple[str, str, str, str]]:
        # What requests create or change; reconcile of other tests' meters (their retained states reach every
        # control that starts) may add its own commands and attempts meanwhile.
        rows = (await api.get("/v1/commands", params={"limit": 1000})).json()
        return {r["command_id"]: (r["meter_id"], r["kind"], r["origin"], r["reason"]) for r in rows
                if r["origin"] != "reconcile"}  # fmt: skip

    async with running(database_url, mqtt_url) as api:
        before = await requested()
        response = await api.request(method.upper(), path, json=body)
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert await requested() == before


async def test_control_answers_only_signed_requests_and_the_actor_is_the_tokens_subject(
    database_url: str, mqtt_url: str
) -> None:
    meter = f"E-auth-{uuid.uuid4().hex[:8]}"
    account = f"A-auth-{uuid.uuid4().hex[:8]}"
    body = {"meter_id": meter, "kind": "time_sync", "reason": "校时 audit"}
    async with running(database_url, mqtt_url) as api:  # signed as op-1
        for case, headers in infra.refused_credentials("control", "op-1").items():
            refused = await api.post("/v1/commands", json=body, headers=headers, auth=infra.UNSIGNED)
            assert refused.status_code == 401, case
            assert refused.headers["content-type"] == "application/problem+json"
            kept = await api.put(
                f"/v1/keep-power/households/{account}", json={"reason": "medical"}, headers=headers, auth=infra.UNSIGNED
            )
            assert kept.status_code == 401, case
        assert (await api.get("/v1/commands", params={"meter_id": meter})).json() == []
        assert all(flag["subject"] != account for flag in (await api.get("/v1/keep-power")).json())

        # A header or body naming someone else changes nothing: the token's subject is on record.
        issued = await api.post("/v1/commands", json=body, headers={"X-Actor": "someone-else"})
        assert issued.status_code == 202, issued.text
        command = (await api.get(f"/v1/commands/{issued.json()['command_id']}")).json()
        assert command["actor"] == "op-1"
        assert {event["actor"] for event in command["events"] if event["actor"] != "system"} == {"op-1"}
        kept = await api.put(
            f"/v1/keep-power/households/{account}", json={"reason": "medical"}, headers={"X-Actor": "someone-else"}
        )
        assert kept.status_code == 204, kept.text
        flag = next(f for f in (await api.get("/v1/keep-power")).json() if f["subject"] == account)
        assert flag["set_by"] == "op-1"
