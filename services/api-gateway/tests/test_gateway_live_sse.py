"""Live push as server-sent events over a real socket (uvicorn), fed from the real broker: tenant
scoping, single-use tickets for EventSource (rechecking the account), Last-Event-ID resumption (and
its refusal when anything is missing), heartbeats and a clean end at shutdown."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from shuidian_gateway.adapters import live
from shuidian_gateway.adapters.live import LiveHub
from shuidian_gateway.adapters.scopes import TenantScopes
from shuidian_gateway.api.auth import utcnow
from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Scope
from shuidian_gateway.testing import (
    JWT_SECRET,
    PASSWORD,
    Harness,
    alarm_event,
    balance_event,
    gateway_harness,
    meter_state,
)
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
)

pytestmark = pytest.mark.integration
HEARTBEAT = 0.3


@dataclass
class Event:
    event: str | None = None
    id: str | None = None
    data: Any = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


class Stream:
    """One open event stream, parsed line by line as a browser's EventSource would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, *, timeout: float = 10.0) -> Event:
        """The next event that carries data (comments are collected on the side)."""
        async with asyncio.timeout(timeout):
            event = Event()
            async for line in self._lines:
                if line == "":
                    if event.data is not None or event.event is not None:
                        return event
                    event = Event()
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
                elif name == "retry":
                    event.retry = int(value)
            raise EOFError("the stream ended")

    async def rest(self, *, timeout: float = 10.0) -> list[str]:
        """Every line until the server ends the stream."""
        async with asyncio.timeout(timeout):
            return [line async for line in self._lines]


@asynccontextmanager
async def _stream(gw: Harness, *, headers: dict[str, str] | None = None, **params: str) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream("GET", "/v1/me/live", headers=headers or {}, params=params) as response,
    ):
        yield Stream(response)


def _bearer(gw: Harness, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.tokens[who]['access_token']}"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url, live_heartbeat_seconds=HEARTBEAT) as harness:
        async with harness.client() as client, asyncio.timeout(20):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
        yield harness


async def _publish(mqtt_url: str, messages: list[tuple[str, Any]]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, message in messages:
            await client.publish(topic, message.model_dump_json().encode(), qos=1)


def _seq(event_id: str | None) -> int:
    assert event_id is not None
    return int(event_id.rsplit("-", 1)[1])


async def test_a_tenant_receives_their_own_events_and_never_another_tenants(gw: Harness, mqtt_url: str) -> None:
    async with _stream(gw, headers=_bearer(gw, "tenant_a")) as a, _stream(gw, headers=_bearer(gw, "tenant_b")) as b:
        assert a.response.status_code == 200
        assert a.response.headers["content-type"].startswith("text/event-stream")
        ready_a, ready_b = await a.next(), await b.next()
        assert (ready_a.event, ready_a.data, ready_a.retry) == ("ready", {"tenant_id": "T-A", "resumed": False}, 3000)
        assert ready_b.data["tenant_id"] == "T-B"
        mine, theirs = balance_event("A-A"), balance_event("A-B")
        # B's events first: if filtering failed, A would see them before A's own.
        await _publish(
            mqtt_url,
            [
                (topics.balance("A-B"), theirs),
                (topics.meter_state("M-B"), meter_state("M-B")),
                (topics.alarm("balance_exhausted"), alarm_event("A-B")),
                (topics.balance("A-A"), mine),
                (topics.meter_state("M-A"), meter_state("M-A")),
                (topics.alarm("balance_exhausted"), alarm_event("M-A")),
            ],
        )
        got_a = [await a.next() for _ in range(3)]
        got_b = [await b.next() for _ in range(3)]
    assert [e.event for e in got_a] == ["balance", "meter_state", "alarm"]
    assert got_a[0].data["message_id"] == str(mine.message_id)
    assert got_a[0].data["balance"] == "-0.10"  # money stays a decimal string
    assert (got_a[1].data["meter_id"], got_a[2].data["source_id"]) == ("M-A", "M-A")
    assert [e.data.get("account_id") or e.data.get("meter_id") or e.data["source_id"] for e in got_b] == [
        "A-B",
        "M-B",
        "A-B",
    ]
    assert got_b[0].data["message_id"] == str(theirs.message_id)
    # Ids increase within a stream and share the replica's epoch with the ready event.
    epoch = ready_a.id.rsplit("-", 1)[0] if ready_a.id else ""
    assert all(e.id and e.id.startswith(epoch + "-") for e in got_a)
    assert [_seq(e.id) for e in got_a] == sorted(_seq(e.id) for e in got_a)
    assert _seq(got_a[0].id) > _seq(ready_a.id)


async def test_an_idle_stream_gets_heartbeats(gw: Harness) -> None:
    async with _stream(gw, headers=_bearer(gw, "tenant_a")) as a:
        await a.next()
        with pytest.raises(TimeoutError):
            await a.next(timeout=HEARTBEAT * 4)  # no events...
    assert a.comments.count("heartbeat") >= 2  # ...but the connection is kept warm


async def test_a_reconnect_with_last_event_id_gets_what_it_missed(gw: Harness, mqtt_url: str) -> None:
    async with _stream(gw, headers=_bearer(gw, "tenant_a")) as first:
        await first.next()
        await _publish(mqtt_url, [(topics.balance("A-A"), balance_event("A-A", 1))])
        seen = await first.next()
    missed = [balance_event("A-A", 2), balance_event("A-B", 2), balance_event("A-A", 3)]
    async with _stream(gw, headers=_bearer(gw, "tenant_b")) as witness:
        await witness.next()
        await _publish(mqtt_url, [(topics.balance(m.account_id), m) for m in missed])
        await witness.next()  # B's event arrived, so the ones published before it did too
    async with _stream(gw, headers={**_bearer(gw, "tenant_a"), "Last-Event-ID": seen.id or ""}) as resumed:
        ready = await resumed.next()
        replayed = [await resumed.next(), await resumed.next()]
    assert (ready.data["resumed"], ready.id) == (True, seen.id)
    assert [e.data["message_id"] for e in replayed] == [str(missed[0].message_id), str(missed[2].message_id)]
    for stale in ("0000-1", f"{(seen.id or '').rsplit('-', 1)[0]}-999999999", "garbage"):
        async with _stream(gw, headers={**_bearer(gw, "tenant_a"), "Last-Event-ID": stale}) as fresh:
            ready = await fresh.next()
            assert ready.data["resumed"] is False
            with pytest.raises(TimeoutError):  # nothing is replayed
                await fresh.next(timeout=HEARTBEAT * 2)


async def test_eventsource_clients_connect_with_a_single_use_ticket(gw: Harness, mqtt_url: str) -> None:
    async with gw.client("tenant_a") as a, gw.client("cashier") as cashier:
        issued = await a.post("/v1/me/live/tickets")
        refused = await cashier.post("/v1/me/live/tickets")
        ticket = issued.json()["ticket"]
        as_bearer = await a.get("/v1/me", headers={"Authorization": f"Bearer {ticket}"})
    assert issued.status_code == 201
    assert issued.json()["expires_in"] == gw.settings.live_ticket_seconds
    assert issued.json()["url"] == f"/v1/me/live?ticket={ticket}"
    assert refused.status_code == 403
    assert as_bearer.status_code == 401  # a ticket opens the live stream and nothing else
    async with _stream(gw, ticket=ticket) as stream:
        ready = await stream.next()
        await _publish(
            mqtt_url, [(topics.balance("A-B"), balance_event("A-B")), (topics.balance("A-A"), balance_event("A-A"))]
        )
        event = await stream.next()
    assert ready.data == {"tenant_id": "T-A", "resumed": False}
    assert event.data["account_id"] == "A-A"
    async with _stream(gw, ticket=ticket) as again:  # EventSource's automatic reconnect: a new ticket is needed
        body = json.loads(await again.response.aread())
    assert again.response.status_code == 401
    assert "used already" in body["detail"]


async def _ticket(gw: Harness, token: str) -> str:
    async with gw.client(headers={"Authorization": f"Bearer {token}"}) as client:
        issued = await client.post("/v1/me/live/tickets")
    assert issued.status_code == 201, issued.text
    ticket: str = issued.json()["ticket"]
    return ticket


async def test_a_ticket_opens_one_stream_even_when_used_at_once_twice(gw: Harness) -> None:
    ticket = await _ticket(gw, gw.tokens["tenant_a"]["access_token"])

    async def connect() -> tuple[int, str]:
        async with _stream(gw, ticket=ticket) as stream:
            if stream.response.status_code == 200:
                return 200, (await stream.next()).event or ""
            return stream.response.status_code, json.loads(await stream.response.aread())["code"]

    results = await asyncio.gather(*(connect() for _ in range(4)))
    assert sorted(results) == [(200, "ready"), (401, "unauthorised"), (401, "unauthorised"), (401, "unauthorised")]


async def _new_tenant(gw: Harness, name: str) -> tuple[str, str, str]:
    """A tenant user of T-A of this test's own (the roster's stay untouched): id, username, access token."""
    username = f"{name}-{uuid.uuid4().hex[:8]}"
    async with gw.client("bootstrap") as admin:
        created = await admin.post(
            "/v1/users", json={"username": username, "password": PASSWORD, "role": "tenant", "tenant_id": "T-A"}
        )
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient(base_url=gw.url) as client:
        signed_in = await client.post(
            "/v1/auth/token", data={"grant_type": "password", "username": username, "password": PASSWORD}
        )
    signed_in.raise_for_status()
    return created.json()["user_id"], username, signed_in.json()["access_token"]


# Failed sign-ins no longer lock an account (they slow the next attempt down), so someone guessing
# a tenant's password cannot end the tenant's live stream either.
@pytest.mark.parametrize("change", ["disabled", "no_longer_a_tenant_of_T_A"])
async def test_a_ticket_is_refused_when_its_account_changed_since(gw: Harness, change: str) -> None:
    user_id, _, token = await _new_tenant(gw, change)
    ticket = await _ticket(gw, token)
    if change == "disabled":
        async with gw.client("bootstrap") as admin:
            changed = await admin.patch(f"/v1/users/{user_id}", json={"active": False})
        assert changed.status_code == 200, changed.text
    else:  # the API cannot move a user to another tenant; the database can
        async with gw.app.state.container.runtime.engine.begin() as conn:
            await conn.execute(
                text("UPDATE gateway.users SET tenant_id = 'T-B' WHERE user_id = :u"), {"u": uuid.UUID(user_id)}
            )
    async with _stream(gw, ticket=ticket) as stream:
        body = json.loads(await stream.response.aread())
    assert stream.response.status_code == 401
    assert "disabled or locked" in body["detail"]


async def test_a_ticket_id_is_recorded_until_the_ticket_expires(gw: Harness) -> None:
    engine = gw.app.state.container.runtime.engine
    ticket = await _ticket(gw, gw.tokens["tenant_a"]["access_token"])
    async with _stream(gw, ticket=ticket) as stream:
        assert (await stream.next()).event == "ready"
    claims = security.decode_live_ticket(JWT_SECRET, gw.settings.jwt_issuer, ticket, now=utcnow())
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO gateway.live_tickets_used (ticket_id, expires_at) VALUES ('old', now() - interval '1 s')")
        )
    forgotten = await live.forget_used_tickets(engine)
    async with engine.connect() as conn:
        kept = set((await conn.execute(text("SELECT ticket_id FROM gateway.live_tickets_used"))).scalars())
    assert forgotten >= 1
    assert "old" not in kept
    assert claims.ticket_id in kept  # not expired yet: a second use is still refused
    assert timedelta(0) < claims.expires_at - utcnow() <= timedelta(seconds=gw.settings.live_ticket_seconds)


@pytest.mark.parametrize("who", ["nobody", "forged", "access_token_as_ticket", "expired_ticket", "cashier", "api_key"])
async def test_the_stream_refuses_anyone_but_a_tenant(gw: Harness, who: str) -> None:
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if who == "forged":
        headers["Authorization"] = "Bearer forged.token.value"
    elif who == "access_token_as_ticket":
        params["ticket"] = gw.tokens["tenant_a"]["access_token"]
    elif who == "expired_ticket":
        params["ticket"] = security.encode_live_ticket(
            JWT_SECRET, gw.settings.jwt_issuer, user_id="u", tenant_id="T-A", now=utcnow(), ttl=timedelta(seconds=-1)
        )
    elif who == "cashier":
        headers = _bearer(gw, "cashier")
    elif who == "api_key":
        async with gw.client("admin") as admin:
            created = await admin.post(
                "/v1/api-keys", json={"name": "live", "scopes": ["alarms:read"], "estates": ["*"]}
            )
        headers["Authorization"] = f"Bearer {created.json()['key']}"
    async with _stream(gw, headers=headers, **params) as stream:
        body = await stream.response.aread()
    expected = 403 if who in ("cashier", "api_key") else 401
    assert stream.response.status_code == expected
    assert stream.response.headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == expected


async def test_shutdown_ends_open_streams_cleanly(database_url: str, mqtt_url: str) -> None:
    async with asyncio.timeout(60), gateway_harness(database_url, mqtt_url) as own:
        stream_cm = _stream(own, headers=_bearer(own, "tenant_a"))
        stream = await stream_cm.__aenter__()
        await stream.next()
        hub = own.app.state.container.live
        assert hub.clients == 1
    # The harness has stopped (a server waiting for the open stream would never have got here).
    try:
        tail = await stream.rest(timeout=5)
    finally:
        await stream_cm.__aexit__(None, None, None)
    assert ": server shutting down; reconnect" in tail
    assert hub.clients == 0


def test_the_stream_is_in_the_openapi_document(gw: Harness) -> None:
    operation = gw.app.openapi()["paths"]["/v1/me/live"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} >= {"ticket", "last-event-id", "last_event_id"}
    assert {"401", "403"} <= set(operation["responses"])
    tickets = gw.app.openapi()["paths"]["/v1/me/live/tickets"]["post"]
    assert tickets["summary"]
    assert "201" in tickets["responses"]


class EvictingScopes:
    """Tenant scopes whose answer comes only after more frames than the hub holds went through it:
    what a slow billing answer does to a busy replica while a client resumes."""

    def __init__(self, real: TenantScopes, hub: LiveHub, account_id: str, frames: int) -> None:
        self.real, self.hub, self.account_id, self.frames = real, hub, account_id, frames
        self.published: list[BalanceEvent] = []

    async def of(self, tenant_id: str) -> Scope:
        scope = await self.real.of(tenant_id)
        for n in range(self.frames):
            message = balance_event(self.account_id, 100 + n)
            self.published.append(message)
            await self.hub.on_message(message, topics.balance(self.account_id))
            await asyncio.sleep(0)
        self.frames = 0  # only once
        return scope


RESUME_FRAMES = 4


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def small(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    """A gateway that holds only a few frames for resumption."""
    async with gateway_harness(database_url, mqtt_url, live_resume_frames=RESUME_FRAMES) as harness:
        yield harness


async def test_frames_evicted_while_the_scope_is_read_mean_resumed_false(small: Harness) -> None:
    hub: LiveHub = small.app.state.container.live
    async with _stream(small, headers=_bearer(small, "tenant_a")) as first:
        ready = await first.next()
    real = small.app.state.container.scopes
    small.app.state.container.scopes = EvictingScopes(real, hub, "A-A", RESUME_FRAMES + 1)
    try:
        async with _stream(small, headers={**_bearer(small, "tenant_a"), "Last-Event-ID": ready.id or ""}) as again:
            resumed = await again.next()
            with pytest.raises(TimeoutError):  # no partial replay either
                await again.next(timeout=0.5)
    finally:
        small.app.state.container.scopes = real
    assert resumed.data["resumed"] is False
    assert _seq(resumed.id) == _seq(ready.id) + RESUME_FRAMES + 1  # a fresh start from now


async def test_a_resumption_needing_more_than_is_held_is_refused(small: Harness, mqtt_url: str) -> None:
    async with _stream(small, headers=_bearer(small, "tenant_a")) as first:
        ready = await first.next()
    many = [balance_event("A-A", 200 + n) for n in range(RESUME_FRAMES + 1)]
    async with _stream(small, headers=_bearer(small, "tenant_b")) as witness:
        await witness.next()
        await _publish(
            mqtt_url, [(topics.balance("A-A"), m) for m in many] + [(topics.balance("A-B"), balance_event("A-B"))]
        )
        await witness.next()
    async with _stream(small, headers={**_bearer(small, "tenant_a"), "Last-Event-ID": ready.id or ""}) as refused:
        assert (await refused.next()).data["resumed"] is False
    # Missing fewer than are held resumes, and a new EventSource passes the id in the query string.
    last = (ready.id or "").rsplit("-", 1)[0] + f"-{_seq(ready.id) + 2}"
    ticket = await _ticket(small, small.tokens["tenant_a"]["access_token"])
    async with _stream(small, ticket=ticket, last_event_id=last) as resumed:
        again = await resumed.next()
        replayed = [await resumed.next() for _ in range(RESUME_FRAMES - 1)]
    assert (again.data["resumed"], again.id) == (True, last)
    assert [e.data["message_id"] for e in replayed] == [str(m.message_id) for m in many[2:]]
