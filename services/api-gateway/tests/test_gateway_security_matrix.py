"""Security matrix: tenant A's token on tenant B's objects (404, indistinguishable from "no such
object"), a tenant token on every staff route (403), a cashier cannot trip, an estate manager
stays inside their estates. Route lists come from the app itself, so a new route is covered or
the coverage test fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from shuidian_gateway.testing import Harness, gateway_harness

pytestmark = pytest.mark.integration

# Every tenant route that names an object, with B's object ids (A asks for them).
B_OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/me/rooms/{room_id}"): {"room_id": "R-B"},
    ("GET", "/v1/me/meters/{meter_id}"): {"meter_id": "M-B"},
    ("GET", "/v1/me/accounts/{account_id}"): {"account_id": "A-B"},
    ("GET", "/v1/me/accounts/{account_id}/usage"): {"account_id": "A-B"},
    ("GET", "/v1/me/accounts/{account_id}/usage/today"): {"account_id": "A-B"},
    ("GET", "/v1/me/accounts/{account_id}/insights"): {"account_id": "A-B"},
    ("GET", "/v1/me/accounts/{account_id}/statements/{month}"): {"account_id": "A-B", "month": "2026-10"},
    ("GET", "/v1/me/accounts/{account_id}/transactions/{txn_id}/explain"): {
        "account_id": "A-B",
        "txn_id": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
    },
    ("GET", "/v1/me/alarms/{alarm_id}"): {"alarm_id": "22222222-2222-4222-8222-222222222222"},
    ("POST", "/v1/me/accounts/{account_id}/topups"): {"account_id": "A-B"},
    ("GET", "/v1/me/accounts/{account_id}/payment-methods"): {"account_id": "A-B"},
    ("GET", "/v1/me/payments/{order_id}"): {"order_id": "O-B"},
    ("POST", "/v1/me/payments/{order_id}/sandbox-pay"): {"order_id": "O-B"},
}
MISSING = {
    "room_id": "R-NONE",
    "meter_id": "M-NONE",
    "account_id": "A-NONE",
    "month": "2026-10",
    "txn_id": "00000000-0000-4000-8000-000000000000",
    "alarm_id": "00000000-0000-4000-8000-000000000000",
    "order_id": "O-NONE",
}
PUBLIC_PREFIXES = (
    "/v1/me",
    "/v1/auth/",
    "/v1/payments/notify/",  # payment providers: billing verifies their signature
    "/healthz",
    "/readyz",
    "/metrics",
    "/asyncapi.json",
    "/docs",
    "/openapi",
    "/redoc",
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        # B has a payment order; A will ask for it.
        harness.fake.orders["O-B"] = {
            "order_id": "O-B",
            "account_id": "A-B",
            "amount": "5.00",
            "provider": "sandbox",
            "status": "open",
        }
        yield harness


def _routes(gw: Harness) -> list[tuple[str, str]]:
    """(method, path) of every documented route."""
    return [(m.upper(), path) for path, item in gw.app.openapi()["paths"].items() for m in item]


async def _call(client: Any, method: str, path: str, params: dict[str, Any]) -> Any:
    url = path.format(**params)
    if method == "GET":
        return await client.get(url, params={"format": "pdf"} if "month" in params else None)
    return await client.request(method, url, json={"amount": "5.00"}, headers={"Idempotency-Key": "matrix-key-0001"})


def test_every_tenant_object_route_is_in_the_matrix(gw: Harness) -> None:
    object_routes = {(method, path) for method, path in _routes(gw) if path.startswith("/v1/me/") and "{" in path}
    assert object_routes == set(B_OBJECTS)


@pytest.mark.parametrize(("method", "path"), sorted(B_OBJECTS))
async def test_tenant_a_cannot_reach_tenant_b_objects(gw: Harness, method: str, path: str) -> None:
    async with gw.client("tenant_a") as a, gw.client("tenant_b") as b:
        theirs = await _call(a, method, path, B_OBJECTS[(method, path)])
        missing = await _call(a, method, path, {k: MISSING[k] for k in B_OBJECTS[(method, path)]})
        owner = await _call(b, method, path, B_OBJECTS[(method, path)])
    assert theirs.status_code == 404, theirs.text
    # Same answer as for an object that does not exist at all: existence is not revealed.
    assert missing.status_code == 404
    assert theirs.json()["detail"] == missing.json()["detail"]
    assert owner.status_code in (200, 201), owner.text  # the owner does get it


async def test_a_tenant_sees_only_their_own_lists(gw: Harness) -> None:
    async with gw.client("tenant_a") as a:
        me = (await a.get("/v1/me")).json()
        alarms = (await a.get("/v1/me/alarms")).json()["items"]
        meters = (await a.get("/v1/me/meters")).json()
        accounts = (await a.get("/v1/me/accounts")).json()
        rooms = (await a.get("/v1/me/rooms")).json()["items"]
    assert (me["accounts"], me["rooms"], me["meters"]) == (["A-A"], ["R-A"], ["M-A"])
    assert alarms
    assert {x["source_id"] for x in alarms} <= {"A-A", "M-A"}
    assert [m["meter_id"] for m in meters] == ["M-A"]
    assert [x["account_id"] for x in accounts] == ["A-A"]
    assert [r["room_id"] for r in rooms] == ["R-A"]


async def test_a_tenant_cannot_explain_another_tenants_charge_through_their_own_account(gw: Harness) -> None:
    async with gw.client("tenant_a") as a:
        theirs = await a.get("/v1/me/accounts/A-A/transactions/bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb/explain")
        mine = await a.get("/v1/me/accounts/A-A/transactions/aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa/explain")
    assert theirs.status_code == 404
    assert mine.status_code == 200


def _staff_routes(gw: Harness) -> list[tuple[str, str]]:
    return sorted((method, path) for method, path in _routes(gw) if not path.startswith(PUBLIC_PREFIXES))


def test_the_staff_route_list_is_not_empty(gw: Harness) -> None:
    assert len(_staff_routes(gw)) > 50


async def test_a_tenant_token_is_refused_on_every_staff_route(gw: Harness) -> None:
    calls_before = len(gw.fake.calls)
    refused = []
    async with gw.client("tenant_a") as a:
        for method, path in _staff_routes(gw):
            url = path.replace("{", "").replace("}", "")  # every path parameter becomes a valid id
            url = (
                url.replace("user_id", "00000000-0000-4000-8000-000000000000")
                .replace("key_id", "00000000-0000-4000-8000-000000000000")
                .replace("webhook_id", "00000000-0000-4000-8000-000000000000")
            )
            response = await a.request(method, url, json={}, headers={"Idempotency-Key": "tenant-probe-0001"})
            refused.append((method, path, response.status_code))
    assert {status for *_, status in refused} == {403}, [r for r in refused if r[2] != 403]
    assert len(gw.fake.calls) == calls_before  # nothing reached a backend


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/commands", {"meter_id": "M-A", "kind": "trip", "reason": "arrears"}),
        ("/v1/commands", {"meter_id": "M-A", "kind": "valve_close", "reason": "arrears"}),
        ("/v1/commands/batch", {"meters": ["M-A"], "kind": "trip", "reason": "arrears"}),
        ("/v1/commands/scheduled", {"name": "nightly", "meters": ["M-A"], "kind": "trip", "at_local": "02:00:00"}),
        ("/v1/commands", {"meter_id": "M-A", "kind": "direct_close", "reason": "x", "lift_keep_power": True}),
    ],
)
async def test_a_cashier_cannot_issue_trips(gw: Harness, url: str, body: dict[str, Any]) -> None:
    async with gw.client("cashier") as cashier:
        response = await cashier.post(url, json=body, headers={"Idempotency-Key": f"cashier-trip-{len(url)}"})
    assert response.status_code == 403
    assert gw.fake.command_count("trip") == gw.fake.command_count("valve_close") == 0


async def test_trips_need_commands_trip_but_a_close_does_not(gw: Harness) -> None:
    async with gw.client("maintenance") as maintenance:
        trip = await maintenance.post(
            "/v1/commands",
            json={"meter_id": "M-A", "kind": "trip", "reason": "x"},
            headers={"Idempotency-Key": "maint-trip-1"},
        )
        close = await maintenance.post(
            "/v1/commands",
            json={"meter_id": "M-A", "kind": "direct_close", "reason": "repaired"},
            headers={"Idempotency-Key": "maint-close-1"},
        )
    assert (trip.status_code, close.status_code) == (403, 202)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v1/accounts/A-B"),
        ("GET", "/v1/accounts/A-B/ledger"),
        ("GET", "/v1/rooms/R-B"),
        ("GET", "/v1/estates/E2"),
        ("GET", "/v1/estates/E2/buildings"),
        ("GET", "/v1/accounts/A-B/usage"),
        ("GET", "/v1/meters/M-B/shadow"),
        ("GET", "/v1/meters/M-B/state"),
        ("POST", "/v1/accounts/A-B/topups"),
    ],
)
async def test_an_estate_manager_cannot_see_another_estate(gw: Harness, method: str, url: str) -> None:
    async with gw.client("manager_e1") as manager:
        theirs = await manager.request(
            method, url, json={"amount": "5.00"}, headers={"Idempotency-Key": "mgr-probe-0001"}
        )
        ours = await manager.request(
            method,
            url.replace("-B", "-A").replace("E2", "E1"),
            json={"amount": "5.00"},
            headers={"Idempotency-Key": "mgr-probe-0002"},
        )
    assert theirs.status_code == 404, theirs.text
    assert ours.status_code in (200, 201), ours.text
    assert not any(t["account_id"] == "A-B" for t in gw.fake.topups.values())  # nothing reached billing


async def test_an_estate_manager_lists_only_their_estates(gw: Harness) -> None:
    async with gw.client("manager_e1") as manager:
        rooms = await manager.get("/v1/rooms")
        other = await manager.get("/v1/rooms", params={"estate_id": "E2"})
        spanning = await manager.get("/v1/commands")
        alarms = await manager.get("/v1/alarms")
        trip_b = await manager.post(
            "/v1/commands",
            json={"meter_id": "M-B", "kind": "trip", "reason": "x"},
            headers={"Idempotency-Key": "mgr-trip-b1"},
        )
        trip_a = await manager.post(
            "/v1/commands",
            json={"meter_id": "M-A", "kind": "trip", "reason": "x"},
            headers={"Idempotency-Key": "mgr-trip-a1"},
        )
    assert [r["room_id"] for r in rooms.json()["items"]] == ["R-A"]
    assert other.status_code == 403
    assert spanning.status_code == 200  # commands are filtered to the manager's estate, not refused
    assert {c["meter_id"] for c in spanning.json()["items"]} <= {"M-A"}
    assert alarms.status_code == 200  # the manager's one estate is filled in as the filter
    assert ("GET", "/v1/alarms") in gw.fake.calls
    assert (trip_b.status_code, trip_a.status_code) == (403, 202)
    assert {c["meter_id"] for c in gw.fake.commands.values() if c["kind"] == "trip"} == {"M-A"}


async def test_anonymous_requests_are_401_everywhere_but_the_public_routes(gw: Harness) -> None:
    async with gw.client() as anonymous:
        for method, path in _staff_routes(gw):
            url = path.replace("{", "").replace("}", "")
            response = await anonymous.request(method, url, json={})
            assert response.status_code in (401, 422), (method, path, response.status_code)
            if response.status_code == 422:  # only when a path id failed validation first
                assert "_id" in path
