"""Live push over a WebSocket (filtered to the tenant's scope) and signed webhook deliveries,
both fed from the real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shuidian_gateway import security
from shuidian_gateway.testing import Harness, alarm_event, balance_event, free_port, gateway_harness, meter_state, serve
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        async with httpx.AsyncClient(base_url=harness.url) as client:
            async with asyncio.timeout(20):
                while (await client.get("/readyz")).status_code != 200:  # subscribed once the broker is connected
                    await asyncio.sleep(0.05)
        yield harness


async def _publish(mqtt_url: str, messages: list[tuple[str, Any]]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, message in messages:
            await client.publish(topic, message.model_dump_json().encode(), qos=1)


def _ws_url(gw: Harness) -> str:
    return gw.url.replace("http://", "ws://") + "/v1/me/live"


async def test_live_push_carries_only_the_tenants_own_events(gw: Harness, mqtt_url: str) -> None:
    token = gw.tokens["tenant_a"]["access_token"]
    async with connect(_ws_url(gw), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        async with asyncio.timeout(10):
            while gw.app.state.live.clients == 0:
                await asyncio.sleep(0.02)
        # B's events first: if filtering failed, they would arrive before A's.
        await _publish(
            mqtt_url,
            [
                (topics.meter_state("M-B"), meter_state("M-B")),
                (topics.balance("A-B"), balance_event("A-B")),
                (topics.alarm("balance_exhausted"), alarm_event("A-B")),
                (topics.meter_state("M-A"), meter_state("M-A")),
                (topics.balance("A-A"), balance_event("A-A")),
                (topics.alarm("balance_exhausted"), alarm_event("A-A")),
            ],
        )
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(frames) < 3:
                frames.append(json.loads(await ws.recv()))
    assert [f["type"] for f in frames] == ["meter_state", "balance", "alarm"]
    assert frames[0]["data"]["meter_id"] == "M-A"
    assert frames[1]["data"]["account_id"] == "A-A"
    assert frames[2]["data"]["source_id"] == "A-A"


@pytest.mark.parametrize(("who", "code"), [(None, 4401), ("cashier", 4403), ("forged", 4401)])
async def test_live_push_refuses_non_tenants(gw: Harness, who: str | None, code: int) -> None:
    headers = {}
    if who == "forged":
        headers["Authorization"] = "Bearer forged.token.value"
    elif who:
        headers["Authorization"] = f"Bearer {gw.tokens[who]['access_token']}"
    async with connect(_ws_url(gw), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


async def test_webhooks_are_signed_and_delivered(gw: Harness, mqtt_url: str) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, str]:
        received.append((dict(request.headers), await request.body()))
        return {"ok": "yes"}

    port = free_port()
    async with serve(receiver, port), gw.client("admin") as admin:
        created = await admin.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "events": ["alarm"]})
        assert created.status_code == 201
        secret = created.json()["secret"]
        alarm = alarm_event("A-A")
        await _publish(
            mqtt_url, [(topics.balance("A-A"), balance_event("A-A")), (topics.alarm("balance_exhausted"), alarm)]
        )
        async with asyncio.timeout(15):
            while not any(h.get("shuidian-message-id") == str(alarm.message_id) for h, _ in received):
                await asyncio.sleep(0.05)
        await admin.delete(f"/v1/webhooks/{created.json()['webhook_id']}")
    headers, body = next((h, b) for h, b in received if h.get("shuidian-message-id") == str(alarm.message_id))
    assert headers["shuidian-event"] == "alarm"
    assert security.verify_webhook(secret, headers["shuidian-signature"], body, now=int(time.time()))
    assert not security.verify_webhook("whsec_wrong", headers["shuidian-signature"], body, now=int(time.time()))
    assert not security.verify_webhook(secret, headers["shuidian-signature"], body + b" ", now=int(time.time()))
    assert not security.verify_webhook(secret, headers["shuidian-signature"], body, now=int(time.time()) + 3600)
    assert json.loads(body)["data"]["alarm_id"] == str(alarm.alarm_id)
    assert all(json.loads(b)["event"] == "alarm" for _, b in received)  # the balance event was not asked for


async def test_integrators_manage_only_their_own_webhooks(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        keys = {}
        for name, estates in (("one", ["*"]), ("two", ["*"]), ("scoped", ["E1"])):
            created = await admin.post(
                "/v1/api-keys", json={"name": name, "scopes": ["webhooks:manage"], "estates": estates}
            )
            keys[name] = created.json()["key"]

    def client(name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {keys[name]}"})

    async with client("one") as one, client("two") as two, client("scoped") as scoped:
        mine = await one.post("/v1/webhooks", json={"url": "https://one.example/hook", "events": ["balance"]})
        assert mine.status_code == 201
        hook_id = mine.json()["webhook_id"]
        assert (await two.get(f"/v1/webhooks/{hook_id}")).status_code == 404
        assert (await two.delete(f"/v1/webhooks/{hook_id}")).status_code == 404
        assert [h["webhook_id"] for h in (await one.get("/v1/webhooks")).json()["items"]] == [hook_id]
        assert (await two.get("/v1/webhooks")).json()["items"] == []
        stale = await one.patch(f"/v1/webhooks/{hook_id}", json={"active": False}, headers={"If-Match": 'W/"v7"'})
        assert stale.status_code == 412
        fresh = await one.patch(
            f"/v1/webhooks/{hook_id}", json={"active": False}, headers={"If-Match": mine.headers["etag"]}
        )
        assert fresh.json()["active"] is False
        assert (
            await scoped.post("/v1/webhooks", json={"url": "https://x.example/", "events": ["alarm"]})
        ).status_code == 403
        for bad in (
            {"url": "ftp://x.example/", "events": ["alarm"]},
            {"url": "https://x.example/", "events": ["everything"]},
        ):
            assert (await one.post("/v1/webhooks", json=bad)).status_code == 422
