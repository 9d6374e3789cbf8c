"""Staff listings over real HTTP against billing on a database of its own: estates, buildings,
rooms, tenants and payments — filters, sorting, stable paging, 404 for an unknown estate and 422
for bad filters. Expected rows are recomputed here from what the test created."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from shuidian_billing.adapters.billing import Billing
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
REGISTER = "energy_active_import_total"


@dataclass
class World:
    client: httpx.AsyncClient
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)  # room_id → what we created
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: list[dict[str, Any]] = field(default_factory=list)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
        return response.json() if response.content else None

    async def pay(self, account: str, amount: str, channel: str) -> dict[str, Any]:
        body = {"amount": amount, "channel": channel}
        paid: dict[str, Any] = await self.ok(
            "POST", f"/v1/accounts/{account}/topups", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        self.payments.append(paid)
        return paid

    async def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        page = await self.ok("GET", path, params=params)
        items: list[dict[str, Any]] = page["items"]
        return items


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "listings") as app:
        yield app


# Two estates: E1 with two buildings (floors 1 and 2), E2 with one; rooms of very different areas
# (so numeric and text order differ), two vacant rooms, tenants with similar names and phones.
ROOMS = [
    # room_id, estate, building, level, code, area, tenant (id, name, phone) or None
    ("R1", "E1", "E1-B1", 1, "1-101", "9.50", ("T1", "张伟", "13800000001")),
    ("R2", "E1", "E1-B1", 1, "1-102", "157.20", ("T2", "张伟强", "13900000002")),
    ("R3", "E1", "E1-B1", 2, "1-201", "52.40", None),
    ("R4", "E1", "E1-B2", 1, "2-101", "80.00", ("T3", "李娜", "13800000003")),
    ("R5", "E2", "E2-B1", 1, "3-101", "60.00", ("T4", "王芳", "13700000004")),
    ("R6", "E2", "E2-B1", 3, "3-301", "45.00", None),
]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(app: FastAPI) -> AsyncIterator[World]:
    async with client_of(app) as client:
        w = World(client)
        for estate in ("E1", "E2"):
            await w.ok("PUT", f"/v1/estates/{estate}", json={"name": f"小区{estate}"})
        for building, estate in (("E1-B1", "E1"), ("E1-B2", "E1"), ("E2-B1", "E2")):
            await w.ok("PUT", f"/v1/buildings/{building}", json={"estate_id": estate, "name": f"{building}栋"})
        for room, estate, building, level, code, area, tenant in ROOMS:
            floor = f"{building}-F{level}"
            await w.ok("PUT", f"/v1/floors/{floor}", json={"building_id": building, "level": level})
            await w.ok("PUT", f"/v1/rooms/{room}", json={"floor_id": floor, "code": code, "area_m2": area})
            w.rooms[room] = {"estate": estate, "building": building, "level": level, "code": code, "area": area}
            if tenant is not None:
                tenant_id, name, phone = tenant
                await w.ok("PUT", f"/v1/tenants/{tenant_id}", json={"name": name, "phone": phone})
                lease = await w.ok(
                    "PUT",
                    f"/v1/leases/L-{room}",
                    json={"tenant_id": tenant_id, "room_id": room, "move_in": "2020-01-01"},
                )
                w.rooms[room]["tenant"] = tenant_id
                w.tenants[tenant_id] = {"name": name, "phone": phone, "room": code, "account": lease["account_id"]}
        await w.ok("PUT", "/v1/tenants/T5", json={"name": "无租约", "phone": "13600000005"})  # never leased
        await w.pay("L-R1", "30.00", "cash")
        await w.pay("L-R1", "5.50", "wechat")
        await w.pay("L-R2", "100.00", "bank")
        await w.pay("L-R4", "12.00", "cash")
        await w.pay("L-R5", "40.00", "alipay")
        yield w


async def test_estates_and_their_buildings(world: World) -> None:
    estates = await world.items("/v1/estates")
    assert [(e["estate_id"], e["buildings"], e["rooms"], e["occupied_rooms"]) for e in estates] == [
        ("E1", 2, 4, 3),
        ("E2", 1, 2, 1),
    ]
    one = await world.ok("GET", "/v1/estates/E2")
    assert (one["name"], one["rooms"]) == ("小区E2", 2)
    buildings = await world.items("/v1/estates/E1/buildings", sort="-rooms")
    assert [(b["building_id"], b["floors"], b["rooms"]) for b in buildings] == [("E1-B1", 2, 3), ("E1-B2", 1, 1)]
    assert (await world.client.get("/v1/estates/NOPE")).status_code == 404
    missing = await world.client.get("/v1/estates/NOPE/buildings")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


async def test_rooms_filter_by_estate_building_floor_and_occupancy(world: World) -> None:
    def expected(**match: Any) -> list[str]:
        return sorted(
            (r for r, v in world.rooms.items() if all(v.get(k) == m for k, m in match.items())),
            key=lambda r: world.rooms[r]["code"],
        )

    assert [r["room_id"] for r in await world.items("/v1/rooms", estate_id="E1")] == expected(estate="E1")
    assert [r["room_id"] for r in await world.items("/v1/rooms", building_id="E1-B1", floor=1)] == expected(
        building="E1-B1", level=1
    )
    vacant = await world.items("/v1/rooms", occupied="false")
    assert sorted(r["room_id"] for r in vacant) == sorted(r for r, v in world.rooms.items() if "tenant" not in v)
    assert all(r["tenant_id"] is None and r["occupied"] is False for r in vacant)
    # A building outside the estate named lists nothing (filters are conjunctive), it does not widen it.
    assert await world.items("/v1/rooms", estate_id="E2", building_id="E1-B1") == []
    r1 = (await world.items("/v1/rooms", code="1-101"))[0]
    assert (r1["tenant_id"], r1["tenant_name"], r1["account_id"], r1["area_m2"]) == ("T1", "张伟", "L-R1", "9.50")
    # Numeric order by area (as text "9.50" would sort after "157.20").
    areas = [Decimal(r["area_m2"]) for r in await world.items("/v1/rooms", sort="-area")]
    assert areas == sorted((Decimal(v["area"]) for v in world.rooms.values()), reverse=True)


async def test_households_list_by_balance_level(world: World) -> None:
    """Rooms carry their household's balance level, and filter by it; a vacant room has none."""
    rooms = await world.items("/v1/rooms", limit=100)
    levels = {r["room_id"]: r["level"] for r in rooms}
    for room in rooms:
        if room["account_id"] is None:
            assert room["level"] is None
        else:
            assert room["level"] == (await world.ok("GET", f"/v1/accounts/{room['account_id']}"))["level"]
    for level in ("ok", "low_1", "low_2", "exhausted"):
        listed = sorted(r["room_id"] for r in await world.items("/v1/rooms", level=level))
        assert listed == sorted(r for r, v in levels.items() if v == level), level
    assert len({v for v in levels.values() if v is not None}) >= 2  # more than one level is exercised
    assert (await world.client.get("/v1/rooms", params={"level": "broke"})).status_code == 422


async def test_room_pages_are_stable_and_complete(world: World) -> None:
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await world.ok("GET", "/v1/rooms", params={"limit": 4, "offset": offset, "sort": "floor"})
        assert len(page["items"]) <= 4
        seen += [r["room_id"] for r in page["items"]]
        offset = page["next_offset"]
    # Floor levels tie; the room id breaks ties, so the pages neither repeat nor skip a room.
    assert sorted(seen) == sorted(world.rooms)
    assert len(seen) == len(set(seen))
    levels = [world.rooms[r]["level"] for r in seen]
    assert levels == sorted(levels)


async def test_tenants_by_estate_name_and_phone_fragment(world: World) -> None:
    e1 = await world.items("/v1/tenants", estate_id="E1", sort="tenant_id")
    assert [t["tenant_id"] for t in e1] == ["T1", "T2", "T3"]
    assert e1[0]["rooms"] == ["1-101"]
    assert e1[0]["accounts"] == ["L-R1"]
    assert [t["tenant_id"] for t in await world.items("/v1/tenants", name="张伟", sort="tenant_id")] == ["T1", "T2"]
    by_phone = await world.items("/v1/tenants", phone="138", sort="tenant_id")
    assert [t["tenant_id"] for t in by_phone] == sorted(t for t, v in world.tenants.items() if "138" in v["phone"])
    # LIKE wildcards in a fragment are taken literally.
    assert await world.items("/v1/tenants", name="%") == []
    everyone = await world.items("/v1/tenants", sort="tenant_id")
    assert [t["tenant_id"] for t in everyone] == ["T1", "T2", "T3", "T4", "T5"]
    assert everyone[-1]["rooms"] == []


async def test_payments_filter_sort_and_state(world: World) -> None:
    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["payment_id"] for r in rows]

    everything = await world.items("/v1/payments")
    # Newest first by default.
    assert ids(everything) == [str(p["payment_id"]) for p in reversed(world.payments)]
    cash = await world.items("/v1/payments", channel="cash", sort="amount")
    assert [r["amount"] for r in cash] == sorted(
        (p["amount"] for p in world.payments if p["channel"] == "cash"), key=Decimal
    )
    e2 = await world.items("/v1/payments", estate_id="E2")
    assert [(r["account_id"], r["estate_id"], r["amount"]) for r in e2] == [("L-R5", "E2", "40.00")]
    # Refund part of one payment and reverse (冲正) another: their states follow.
    bank = next(p for p in world.payments if p["channel"] == "bank")
    await world.ok(
        "POST",
        f"/v1/payments/{bank['payment_id']}/refunds",
        json={"amount": "25.00", "operator": "finance", "reason": "多缴"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    wechat = next(p for p in world.payments if p["channel"] == "wechat")
    await world.ok(
        "POST", f"/v1/ledger/transactions/{wechat['txn_id']}/reversal", json={"operator": "fin", "reason": "重复"}
    )
    states = {r["payment_id"]: (r["state"], r["refunded"]) for r in await world.items("/v1/payments")}
    assert states[str(bank["payment_id"])] == ("partly_refunded", "25.00")
    assert states[str(wechat["payment_id"])] == ("reversed", "0.00")
    assert ids(await world.items("/v1/payments", state="reversed")) == [str(wechat["payment_id"])]
    assert ids(await world.items("/v1/payments", account_id="L-R1", state="paid")) == [
        str(p["payment_id"]) for p in world.payments if p["account_id"] == "L-R1" and p["channel"] == "cash"
    ]
    assert await world.items("/v1/payments", start="2999-01-01") == []
    assert len(await world.items("/v1/payments", start="2020-01-01", end="2999-01-01")) == len(world.payments)


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/rooms", {"sort": "nonsense"}, 422),
        ("/v1/rooms", {"sort": "area; DROP TABLE billing.rooms"}, 422),
        ("/v1/rooms", {"floor": "first"}, 422),
        ("/v1/rooms", {"occupied": "perhaps"}, 422),
        ("/v1/rooms", {"limit": 0}, 422),
        ("/v1/rooms", {"offset": -1}, 422),
        ("/v1/rooms", {"estate_id": "NOPE"}, 404),
        ("/v1/tenants", {"estate_id": "NOPE"}, 404),
        ("/v1/payments", {"channel": "paypal"}, 422),
        ("/v1/payments", {"state": "lost"}, 422),
        ("/v1/payments", {"start": "yesterday"}, 422),
        ("/v1/payments", {"start": "2026-12-01T00:00:00"}, 422),  # an instant needs its offset
        ("/v1/payments", {"start": "2026-12-02", "end": "2026-12-01"}, 422),
        ("/v1/payments", {"estate_id": "NOPE"}, 404),
    ],
)
async def test_bad_filters_are_refused(world: World, path: str, params: dict[str, Any], status: int) -> None:
    response = await world.client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await world.client.get("/v1/rooms")).status_code == 200  # nothing was dropped


async def test_the_one_statement_account_read_matches_billing(app: FastAPI, world: World) -> None:
    """GET /v1/accounts/{id} reads in one statement what `Billing.account` reads in four: same answer,
    for shared and separate purses, subsidy, posted charges with carried remainders and open accruals."""
    billing: Billing = app.state.container.billing
    await world.ok(
        "PUT", "/v1/tariffs/electricity", json={"unit_price": "0.613", "effective_from": "2018-01-01T00:00:00Z"}
    )
    await world.ok("PUT", "/v1/estates/E3", json={"name": "分账小区", "shared_balance": False})
    await world.ok("PUT", "/v1/accounts/ACC-S", json={"name": "分账户", "estate_id": "E3"})
    await world.ok("PUT", "/v1/meters/M-S/binding", json={"account_id": "ACC-S", "utility": "electricity"})
    await world.ok(
        "POST",
        "/v1/accounts/ACC-S/topups",
        json={"amount": "10.00", "utility": "electricity"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    await world.ok(
        "POST",
        "/v1/accounts/ACC-S/subsidies",
        json={"amount": "3.00", "program": "低保", "utility": "water"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    start = datetime(2018, 6, 1, 1, tzinfo=UTC)
    readings = tuple(
        Reading.create("M-S", Utility.ELECTRICITY, start + timedelta(hours=h), registers={REGISTER: Decimal(v)})
        for h, v in ((0, "1000"), (4, "1003.3"), (6, "1004.71"))
    )
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=readings), "")
    await billing.poster.flush(before=start + timedelta(hours=5))  # one hour posted (a remainder carried), one open
    for account in ("ACC-S", "L-R1", "L-R2", "L-R5"):
        served = await world.ok("GET", f"/v1/accounts/{account}")
        # The one-statement read against the purse figures balance levels are evaluated from.
        async with billing.engine.connect() as conn:
            purses = await billing.levels.available(conn, [account])
        expected: list[dict[str, Any]] = [{"purse": p, **figures} for (_, p), figures in sorted(purses.items())]
        assert [{k: v if k == "purse" else Decimal(v) for k, v in p.items()} for p in served["purses"]] == expected
        paid = sum((p["paid"] for p in expected), Decimal("0.00"))
        subsidy = sum((p["subsidy"] for p in expected), Decimal("0.00"))
        totals = (Decimal(served["paid_balance"]), Decimal(served["subsidy_balance"]), Decimal(served["balance"]))
        assert totals == (paid, subsidy, paid + subsidy), account
        assert Decimal(served["available"]) == sum((p["available"] for p in expected), Decimal(0)), account
    separate = await world.ok("GET", "/v1/accounts/ACC-S")
    assert [p["purse"] for p in separate["purses"]] == ["electricity", "water"]
    assert Decimal(separate["purses"][0]["pending"]) == Decimal("0.0029") + Decimal("1.41") * Decimal("0.613")
    assert separate["paid_balance"] == "7.98"  # 10.00 − 2.02 posted
    missing = await world.client.get("/v1/accounts/NO-SUCH")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


async def test_arrears_are_per_purse_where_balances_are_separate(app: FastAPI, world: World) -> None:
    """In an estate with separate water and electricity balances, only the purse below zero is in arrears."""
    billing: Billing = app.state.container.billing
    await world.ok(
        "PUT", "/v1/tariffs/electricity", json={"unit_price": "0.613", "effective_from": "2018-01-01T00:00:00Z"}
    )
    await world.ok("PUT", "/v1/estates/E4", json={"name": "分账小区二", "shared_balance": False})
    await world.ok("PUT", "/v1/accounts/ACC-P", json={"name": "分账户二", "estate_id": "E4"})
    await world.ok("PUT", "/v1/meters/M-P/binding", json={"account_id": "ACC-P", "utility": "electricity"})
    await world.ok(
        "POST",
        "/v1/accounts/ACC-P/topups",
        json={"amount": "5.00", "utility": "water"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    start = datetime(2018, 7, 1, 1, tzinfo=UTC)
    readings = tuple(
        Reading.create("M-P", Utility.ELECTRICITY, start + timedelta(hours=h), registers={REGISTER: Decimal(v)})
        for h, v in ((0, "200"), (2, "210"))
    )
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=readings), "")
    await billing.poster.flush(before=start + timedelta(hours=3))
    account = await world.ok("GET", "/v1/accounts/ACC-P")
    assert account["balance"] == "-1.13"  # 5.00 for water − 10 kWh × 0.613 = 6.13 posted for electricity
    report = await world.ok("GET", "/v1/reports/arrears", params={"estate_id": "E4"})
    assert [(r["account_id"], r["purse"], r["balance"], r["level"]) for r in report["items"]] == [
        ("ACC-P", "electricity", "-6.13", "exhausted")
    ]
