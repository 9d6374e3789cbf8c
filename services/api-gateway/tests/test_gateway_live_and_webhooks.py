"""Live push over a WebSocket (filtered to the tenant's scope; bearer header or single-use ticket,
never an access token in the URL) and signed webhook deliveries, both fed from the real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shuidian_gateway.api.auth import utcnow
from shuidian_gateway.domain import security
from shuidian_gateway.testing import (
    JWT_SECRET,
    PASSWORD,
    Harness,
    alarm_event,
    balance_event,
    free_port,
    gateway_harness,
    meter_state,
    serve,
)
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    # The webhook receivers listen on loopback, which only an allow-list admits.
    async with gateway_harness(database_url, mqtt_url, webhook_allowed_networks="127.0.0.1/32") as harness:
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
            while gw.app.state.container.live.clients == 0:
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


async def _close_code(url: str, headers: dict[str, str] | None = None) -> int:
    """The close code of a WebSocket the gateway refuses (it accepts, then closes with the reason)."""
    async with connect(url, additional_headers=headers or {}) as ws, asyncio.timeout(10):
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def _ticket_for(gw: Harness, user_id: str, tenant_id: str, *, ttl: float = 30, secret: str = JWT_SECRET) -> str:
    """A ticket the gateway did not issue: for someone it would never issue one to, or mis-signed."""
    return security.encode_live_ticket(
        secret, gw.settings.jwt_issuer, user_id=user_id, tenant_id=tenant_id, now=utcnow(), ttl=timedelta(seconds=ttl)
    )


@pytest.mark.parametrize(
    ("who", "code"),
    [
        (None, 4401),
        ("cashier", 4403),
        ("forged", 4401),
        ("access_token_in_query", 4401),
        ("access_token_as_ticket", 4401),
        ("forged_ticket", 4401),
        ("expired_ticket", 4401),
        ("ticket_for_another_tenants_user", 4401),
        ("ticket_for_a_cashier", 4401),
    ],
)
async def test_live_push_refuses_non_tenants(gw: Harness, who: str | None, code: int) -> None:
    headers = {}
    query = ""
    if who == "forged":
        headers["Authorization"] = "Bearer forged.token.value"
    elif who == "access_token_in_query":  # no longer accepted: a URL ends up in logs and history
        query = f"?access_token={gw.tokens['tenant_a']['access_token']}"
    elif who == "access_token_as_ticket":
        query = f"?ticket={gw.tokens['tenant_a']['access_token']}"
    elif who == "forged_ticket":  # tenant A's claims, signed with another key
        query = f"?ticket={_ticket_for(gw, gw.user_ids['tenant_a'], 'T-A', secret='not-the-gateways-secret-but-as-long-as-one')}"
    elif who == "expired_ticket":
        query = f"?ticket={_ticket_for(gw, gw.user_ids['tenant_a'], 'T-A', ttl=-1)}"
    elif who == "ticket_for_another_tenants_user":  # tenant B's user, tenant A's stream
        query = f"?ticket={_ticket_for(gw, gw.user_ids['tenant_b'], 'T-A')}"
    elif who == "ticket_for_a_cashier":
        query = f"?ticket={_ticket_for(gw, gw.user_ids['cashier'], 'T-A')}"
    elif who:
        headers["Authorization"] = f"Bearer {gw.tokens[who]['access_token']}"
    assert await _close_code(_ws_url(gw) + query, headers) == code


async def _live_ticket(gw: Harness, token: str) -> str:
    async with gw.client(headers={"Authorization": f"Bearer {token}"}) as client:
        issued = await client.post("/v1/me/live/tickets")
    assert issued.status_code == 201, issued.text
    ticket: str = issued.json()["ticket"]
    return ticket


async def test_gateway_ws_a_ticket_opens_one_websocket(gw: Harness, mqtt_url: str) -> None:
    ticket = await _live_ticket(gw, gw.tokens["tenant_a"]["access_token"])
    hub = gw.app.state.container.live
    before = hub.clients
    async with connect(f"{_ws_url(gw)}?ticket={ticket}") as ws:
        async with asyncio.timeout(10):
            while hub.clients == before:
                await asyncio.sleep(0.02)
        mine = balance_event("A-A")
        await _publish(mqtt_url, [(topics.balance("A-B"), balance_event("A-B")), (topics.balance("A-A"), mine)])
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not frames or frames[-1]["data"].get("message_id") != str(mine.message_id):
                frames.append(json.loads(await ws.recv()))
    assert frames[-1]["type"] == "balance"
    assert all(f["data"].get("account_id") != "A-B" for f in frames)  # tenant A's scope, as with a bearer token
    # A browser's reconnect with the same URL: the ticket was used up (on every replica).
    assert await _close_code(f"{_ws_url(gw)}?ticket={ticket}") == 4401


async def test_gateway_ws_a_ticket_of_a_tenant_disabled_since_is_refused(gw: Harness) -> None:
    username = f"ws-disabled-{uuid.uuid4().hex[:8]}"
    async with gw.client("bootstrap") as admin:
        created = await admin.post(
            "/v1/users", json={"username": username, "password": PASSWORD, "role": "tenant", "tenant_id": "T-A"}
        )
        assert created.status_code == 201, created.text
        async with httpx.AsyncClient(base_url=gw.url) as client:
            signed_in = await client.post(
                "/v1/auth/token", data={"grant_type": "password", "username": username, "password": PASSWORD}
            )
        ticket = await _live_ticket(gw, signed_in.json()["access_token"])
        disabled = await admin.patch(f"/v1/users/{created.json()['user_id']}", json={"active": False})
    assert disabled.status_code == 200  # the account is disabled now...
    assert await _close_code(f"{_ws_url(gw)}?ticket={ticket}") == 4401  # ...so its earlier ticket opens nothing


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
