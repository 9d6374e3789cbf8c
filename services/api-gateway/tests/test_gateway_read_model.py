"""The tenant read path served from memory: the generic read cache (expiry, one fetch for
concurrent misses, invalidation during a fetch, bounded size), the balance read model (seeded from
billing on a miss, dropped by a newer BalanceEvent, older events ignored), the verified-token
cache, and the same through a running gateway fed by the real broker — without ever answering one
tenant with another tenant's account."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from shuidian_gateway.adapters.readcache import BalanceReadModel, CachedBalance, ReadCache, VerifiedTokens
from shuidian_gateway.domain.policy import Principal, Role
from shuidian_gateway.testing import Harness, gateway_harness
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _counting(values: list[str]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A fetch returning the next value each call, and its call counter."""
    calls = [0]

    async def fetch() -> str:
        calls[0] += 1
        await asyncio.sleep(0)
        return values[calls[0] - 1]

    return fetch, calls


# -- the read cache ------------------------------------------------------------------------------
async def test_a_cached_value_is_served_until_its_ttl_then_fetched_again() -> None:
    clock = Clock()
    cache: ReadCache[str, str] = ReadCache(2.0, clock=clock)
    fetch, calls = _counting(["first", "second"])
    assert await cache.get("k", fetch) == "first"
    clock.now += 1.99
    assert await cache.get("k", fetch) == "first"
    clock.now += 0.02
    assert cache.peek("k") is None
    assert await cache.get("k", fetch) == "second"
    assert calls[0] == 2


async def test_concurrent_misses_share_one_backend_call() -> None:
    cache: ReadCache[str, str] = ReadCache(5.0)
    release = asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "value"

    readers = [asyncio.create_task(cache.get("k", slow)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*readers) == ["value"] * 20
    assert calls == 1


async def test_a_fetch_invalidated_while_under_way_is_not_kept() -> None:
    cache: ReadCache[str, str] = ReadCache(60.0)
    release = asyncio.Event()

    async def before_the_change() -> str:
        await release.wait()
        return "old"

    reader = asyncio.create_task(cache.get("k", before_the_change))
    await asyncio.sleep(0)
    cache.invalidate("k")  # the backend changed while the read was in flight
    release.set()
    assert await reader == "old"  # that caller asked before the change and gets what was read
    assert cache.peek("k") is None
    fetch, _ = _counting(["new"])
    assert await cache.get("k", fetch) == "new"


async def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    cache: ReadCache[str, str] = ReadCache(60.0)

    async def broken() -> str:
        await asyncio.sleep(0)
        raise RuntimeError("billing is down")

    results = await asyncio.gather(*(cache.get("k", broken) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert cache.peek("k") is None
    assert len(cache) == 0


async def test_the_cache_is_bounded_oldest_out_first() -> None:
    cache: ReadCache[int, int] = ReadCache(60.0, max_entries=3)
    for key in range(5):

        async def value(key: int = key) -> int:
            return key * 10

        await cache.get(key, value)
    assert len(cache) == 3
    assert [cache.peek(k) for k in range(5)] == [None, None, 20, 30, 40]


async def test_a_zero_ttl_caches_nothing() -> None:
    cache: ReadCache[str, str] = ReadCache(0.0)
    fetch, calls = _counting(["a", "b"])
    assert [await cache.get("k", fetch), await cache.get("k", fetch)] == ["a", "b"]
    assert calls[0] == 2


# -- the balance read model ----------------------------------------------------------------------
def _event(account_id: str, sequence: int, balance: str = "-0.10") -> BalanceEvent:
    return BalanceEvent(
        source="test",
        account_id=account_id,
        kind=BalanceEventKind.EXHAUSTED,
        level=BalanceLevel.EXHAUSTED,
        balance=Decimal(balance),
        sequence=sequence,
        meters=(),
    )


class Billing:
    """Billing's account reads, each call counted."""

    def __init__(self) -> None:
        self.figures: dict[str, tuple[str, int]] = {"A1": ("35.20", 3), "A2": ("8.00", 7)}
        self.calls: list[str] = []

    async def fetch(self, account_id: str) -> CachedBalance:
        self.calls.append(account_id)
        await asyncio.sleep(0)
        balance, sequence = self.figures[account_id]
        return CachedBalance(sequence, json.dumps({"account_id": account_id, "balance": balance}).encode())


async def test_a_miss_falls_back_to_billing_and_seeds_the_model() -> None:
    billing = Billing()
    model = BalanceReadModel(60.0, billing.fetch)
    assert model.cached("A1") is None
    first = await model.balance("A1")
    again = await model.balance("A1")
    assert json.loads(first.body)["balance"] == "35.20"
    assert first.sequence == 3
    assert again == first
    assert model.cached("A1") == first
    assert billing.calls == ["A1"]


async def test_a_higher_sequence_replaces_the_balance_and_older_ones_are_ignored() -> None:
    billing = Billing()
    model = BalanceReadModel(60.0, billing.fetch)
    await model.balance("A1")
    billing.figures["A1"] = ("-0.10", 4)
    model.on_event(_event("A1", 3))  # the sequence already held: a redelivery
    model.on_event(_event("A1", 2))  # older
    assert json.loads((await model.balance("A1")).body)["balance"] == "35.20"
    model.on_event(_event("A1", 4))
    assert json.loads((await model.balance("A1")).body)["balance"] == "-0.10"
    assert billing.calls == ["A1", "A1"]
    model.on_event(_event("A1", 4))  # the same event again changes nothing
    await model.balance("A1")
    assert billing.calls == ["A1", "A1"]


async def test_an_event_about_one_account_leaves_the_others_alone() -> None:
    billing = Billing()
    model = BalanceReadModel(60.0, billing.fetch)
    await model.balance("A1")
    await model.balance("A2")
    model.on_event(_event("A1", 99))
    assert model.cached("A1") is None
    cached = model.cached("A2")
    assert cached is not None
    assert json.loads(cached.body) == {"account_id": "A2", "balance": "8.00"}


async def test_an_event_during_a_seeding_read_is_not_lost() -> None:
    billing = Billing()
    release = asyncio.Event()

    async def slow(account_id: str) -> CachedBalance:
        await release.wait()
        return await billing.fetch(account_id)

    model = BalanceReadModel(60.0, slow)
    reader = asyncio.create_task(model.balance("A1"))
    await asyncio.sleep(0)
    model.on_event(_event("A1", 4))  # billing moved on while the read was in flight
    release.set()
    await reader
    assert model.cached("A1") is None  # the next read goes back to billing


# -- verified access tokens ----------------------------------------------------------------------
def test_a_verified_token_is_remembered_until_it_expires_and_the_cache_is_bounded() -> None:
    tokens = VerifiedTokens(max_entries=2)
    now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    alice = Principal("user", "alice", Role.TENANT, frozenset(), "T-A")
    tokens.put("token-a", alice, now + timedelta(minutes=15))
    assert tokens.get("token-a", now + timedelta(minutes=14)) is alice
    assert tokens.get("token-a", now + timedelta(minutes=15)) is None  # expired: verified again, and refused
    assert tokens.get("never-seen", now) is None
    for name in ("t1", "t2", "t3"):
        tokens.put(name, alice, now + timedelta(minutes=15))
    assert len(tokens) == 2
    assert tokens.get("t1", now) is None


# -- through a running gateway, fed by the broker ------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    # Long lifetimes, so anything a test sees change came from an event, not from expiry.
    async with gateway_harness(
        database_url, mqtt_url, balance_cache_seconds=60.0, usage_today_cache_seconds=60.0
    ) as harness:
        async with httpx.AsyncClient(base_url=harness.url) as client:
            async with asyncio.timeout(20):
                while (await client.get("/readyz")).status_code != 200:  # subscribed once the broker is connected
                    await asyncio.sleep(0.05)
        yield harness


async def _publish(mqtt_url: str, events: list[BalanceEvent]) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-rm-{uuid.uuid4().hex[:8]}") as client:
        for event in events:
            await client.publish(topics.balance(event.account_id), event.model_dump_json().encode(), qos=1)


async def _eventually(read: Callable[[], Awaitable[Any]], want: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await read()) != want:
            await asyncio.sleep(0.05)


def _account_reads(gw: Harness, account_id: str) -> int:
    return gw.fake.calls.count(("GET", f"/v1/accounts/{account_id}"))


async def test_balance_reads_come_from_the_model_and_follow_newer_events(gw: Harness, mqtt_url: str) -> None:
    async with gw.client("tenant_a") as a, gw.client("tenant_b") as b:

        async def balance_of(client: httpx.AsyncClient, account_id: str) -> str:
            response = await client.get(f"/v1/me/accounts/{account_id}")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            return str(response.json()["balance"])

        before = _account_reads(gw, "A-A")
        first = (await a.get("/v1/me/accounts/A-A")).json()
        for _ in range(5):
            assert await balance_of(a, "A-A") == "35.20"
        assert _account_reads(gw, "A-A") == before + 1  # seeded once, then served from memory
        assert first == {
            "account_id": "A-A",
            "name": "R-A",
            "balance": "35.20",
            "available": "34.87",
            "available_exact": "34.87",
            "level": "ok",
            "sequence": 3,
        }
        assert (await a.get("/v1/me/accounts")).json() == [first]

        assert await balance_of(b, "A-B") == "35.20"
        # Billing moves both accounts; only events say so. An older event for A and a newer one for B:
        gw.fake.balances["A-A"] = {"balance": "1.00", "available": "1.00", "level": "low_2", "sequence": 5}
        gw.fake.balances["A-B"] = {"balance": "-0.10", "available": "-0.10", "level": "exhausted", "sequence": 4}
        await _publish(mqtt_url, [_event("A-A", 2), _event("A-B", 4)])
        await _eventually(lambda: balance_of(b, "A-B"), "-0.10")
        assert await balance_of(a, "A-A") == "35.20"  # the older event was ignored
        await _publish(mqtt_url, [_event("A-A", 5, "1.00")])
        await _eventually(lambda: balance_of(a, "A-A"), "1.00")

        # Tenant B's account is warm in the model; tenant A still cannot read it.
        theirs = await a.get("/v1/me/accounts/A-B")
        missing = await a.get("/v1/me/accounts/A-NONE")
        today = await a.get("/v1/me/accounts/A-B/usage/today")
    assert theirs.status_code == missing.status_code == today.status_code == 404
    assert theirs.json()["detail"] == missing.json()["detail"]
    assert "-0.10" not in theirs.text


async def test_todays_usage_is_read_once_per_ttl(gw: Harness) -> None:
    reads = gw.fake.calls.count(("GET", "/v1/accounts/A-A/usage"))
    async with gw.client("tenant_a") as a:
        answers = [await a.get("/v1/me/accounts/A-A/usage/today") for _ in range(4)]
    assert {r.status_code for r in answers} == {200}
    assert all(r.json() == answers[0].json() for r in answers)
    assert answers[0].json()["account_id"] == "A-A"
    assert answers[0].json()["rows"]
    assert gw.fake.calls.count(("GET", "/v1/accounts/A-A/usage")) <= reads + 1
