"""Staff reports over real HTTP against billing on a database of its own: arrears, revenue by
channel and local day, consumption by building with 公摊, and the collection rate.

Data goes in through billing's API and Billing class (readings priced, top-ups, refunds, 冲正,
subsidies, the monthly run). Entries older than today are written as the ledger would have
booked them then (balanced, balances moved with them), since a test cannot wait for days.
Every expected figure is recomputed here — from what the test did or from the ledger API —
never copied from the report's own SQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text

from shuidian_billing.adapters import store
from shuidian_billing.adapters.billing import Billing
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}
PRICE = {Utility.ELECTRICITY: Decimal("0.50"), Utility.WATER: Decimal("4.00")}
JUNE = datetime(2018, 6, 1, tzinfo=SHANGHAI)
# meter, utility, room (None: the estate's common meter), register at the start, register at the end
METERS: list[tuple[str, Utility, str | None, str, str]] = [
    ("E-101", Utility.ELECTRICITY, "EA-101", "1000", "1010"),
    ("W-101", Utility.WATER, "EA-101", "50", "53"),
    ("E-102", Utility.ELECTRICITY, "EA-102", "0", "20"),
    ("E-201", Utility.ELECTRICITY, "EA-201", "500", "507"),
    ("E-B101", Utility.ELECTRICITY, "EB-101", "0", "40"),
    ("LIFT-A", Utility.ELECTRICITY, None, "100", "140"),
]
# room, estate, building, area
ROOMS = [
    ("EA-101", "EA", "EA-1", "52.40"),
    ("EA-102", "EA", "EA-1", "157.20"),
    ("EA-201", "EA", "EA-2", "100.00"),
    ("EA-202", "EA", "EA-2", "40.00"),
    ("EB-101", "EB", "EB-1", "60.00"),
]
BUILDING = {room: building for room, _, building, _ in ROOMS}
ESTATE = {room: estate for room, estate, _, _ in ROOMS}


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    # what went through each channel, as the test did it: (account, channel, kind, signed amount, when)
    money: list[tuple[str, str, str, Decimal, datetime]] = field(default_factory=list)
    subsidies: dict[str, Decimal] = field(default_factory=dict)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
        return response.json() if response.content else None

    async def pay(self, account: str, amount: str, channel: str) -> dict[str, Any]:
        body = {"amount": amount, "channel": channel}
        paid: dict[str, Any] = await self.ok(
            "POST", f"/v1/accounts/{account}/topups", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        self.money.append((account, channel, "payment", Decimal(amount), datetime.now(UTC)))
        return paid

    async def booked_earlier(self, at: datetime, kind: str, entries: list[tuple[str, str]]) -> None:
        """A balanced ledger transaction as it would have been booked at `at` (balances move with it)."""
        txn = uuid.uuid4()
        async with self.app.state.container.runtime.engine.begin() as conn:
            for account, amount in entries:
                await conn.execute(
                    text(
                        "INSERT INTO billing.ledger_entries (txn_id, ledger_account, amount, kind, created_at) "
                        "VALUES (:t, :a, :m, :k, :at)"
                    ),
                    {"t": txn, "a": account, "m": Decimal(amount), "k": kind, "at": at},
                )
            await store.add_to_balances(conn, {a: Decimal(m) for a, m in entries})
        channel = {"cash:counter": "cash"}.get(entries[-1][0])
        if kind == "topup" and channel is not None:
            self.money.append(
                (entries[0][0].removeprefix("household:"), channel, "payment", Decimal(entries[0][1]), at)
            )

    async def ledger(self, account: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await self.ok("GET", f"/v1/accounts/{account}/ledger", params={"limit": 1000})
        return entries


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "reports") as app:
        yield app


def lease(room: str) -> str:
    return f"L-{room}"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(app: FastAPI) -> AsyncIterator[World]:
    async with client_of(app) as client:
        w = World(app, client)
        for utility, price in PRICE.items():
            body = {"unit_price": str(price), "effective_from": "2018-01-01T00:00:00+08:00"}
            await w.ok("PUT", f"/v1/tariffs/{utility.value}", json=body)
        for estate in ("EA", "EB"):
            await w.ok("PUT", f"/v1/estates/{estate}", json={"name": f"小区{estate}"})
        for room, estate, building, area in ROOMS:
            await w.ok("PUT", f"/v1/buildings/{building}", json={"estate_id": estate, "name": f"{building}栋"})
            floor = f"{building}-F{room[-3]}"
            await w.ok("PUT", f"/v1/floors/{floor}", json={"building_id": building, "level": int(room[-3])})
            await w.ok("PUT", f"/v1/rooms/{room}", json={"floor_id": floor, "code": room, "area_m2": area})
            await w.ok("PUT", f"/v1/tenants/T-{room}", json={"name": f"住户{room}", "phone": "138"})
            body = {"tenant_id": f"T-{room}", "room_id": room, "move_in": "2018-01-01"}
            await w.ok("PUT", f"/v1/leases/{lease(room)}", json=body)
        # Consumption in June 2018 (local), billed from real readings and posted to the ledger now.
        readings = []
        for meter, utility, place, first, last in METERS:
            if place is None:
                await w.ok("PUT", f"/v1/estates/EA/common-meters/{meter}", json={"utility": utility.value})
            else:
                await w.ok("PUT", f"/v1/rooms/{place}/meters/{meter}", json={"utility": utility.value})
            for at, value in ((JUNE + timedelta(hours=1), first), (JUNE + timedelta(days=19), last)):
                readings.append(Reading.create(meter, utility, at, registers={REGISTER[utility]: Decimal(value)}))
        billing: Billing = app.state.container.billing
        await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=tuple(readings)), "")
        await billing.poster.flush(before=datetime(2018, 7, 1, tzinfo=SHANGHAI))
        await w.ok("POST", "/v1/estates/EA/months/2018-06/run")  # 公摊 of LIFT-A, by area
        # EA-202 fell into arrears 35 days ago and stays there after a small payment today.
        x = store.household(lease("EA-202"))
        await w.booked_earlier(w.now - timedelta(days=40), "topup", [(x, "10.00"), ("cash:counter", "-10.00")])
        await w.booked_earlier(
            w.now - timedelta(days=35), "consumption", [(x, "-30.00"), ("revenue:electricity", "30.00")]
        )
        await w.pay(lease("EA-202"), "5.00", "cash")
        # EB-101 went below zero 12 days ago, back to exactly zero 11 days ago, and below again today.
        y = store.household(lease("EB-101"))
        await w.booked_earlier(
            w.now - timedelta(days=12), "consumption", [(y, "-8.00"), ("revenue:electricity", "8.00")]
        )
        await w.booked_earlier(w.now - timedelta(days=11), "topup", [(y, "8.00"), ("cash:counter", "-8.00")])
        await w.pay(lease("EB-101"), "7.00", "alipay")
        # EA-101 pays enough; one of its payments was at 00:30 local time three days ago.
        await w.pay(lease("EA-101"), "30.00", "cash")
        three_days_ago = datetime.combine(
            (w.now.astimezone(SHANGHAI) - timedelta(days=3)).date(), datetime.min.time(), SHANGHAI
        ) + timedelta(minutes=30)
        a = store.household(lease("EA-101"))
        await w.booked_earlier(three_days_ago, "topup", [(a, "2.00"), ("cash:counter", "-2.00")])
        # EA-102 pays by WeChat and gets part of it refunded.
        paid = await w.pay(lease("EA-102"), "50.00", "wechat")
        await w.ok(
            "POST",
            f"/v1/payments/{paid['payment_id']}/refunds",
            json={"amount": "20.00", "operator": "finance", "reason": "多缴"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        w.money.append((lease("EA-102"), "wechat", "refund", Decimal("-20.00"), datetime.now(UTC)))
        # EA-201 pays by bank, which is reversed (冲正), and gets a subsidy: still in arrears.
        bank = await w.pay(lease("EA-201"), "15.00", "bank")
        await w.ok(
            "POST", f"/v1/ledger/transactions/{bank['txn_id']}/reversal", json={"operator": "fin", "reason": "错账"}
        )
        w.money.append((lease("EA-201"), "bank", "correction", Decimal("-15.00"), datetime.now(UTC)))
        await w.ok(
            "POST",
            f"/v1/accounts/{lease('EA-201')}/subsidies",
            json={"amount": "5.00", "program": "低保"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        w.subsidies[lease("EA-201")] = Decimal("5.00")
        yield w


def since_and_balance(entries: list[dict[str, Any]]) -> tuple[Decimal, datetime | None]:
    """From a household's ledger entries: its balance and when it last went from ≥ 0 to < 0."""
    balance, since = Decimal(0), None
    for e in sorted(entries, key=lambda e: (datetime.fromisoformat(e["created_at"]), e["entry_id"])):
        before = balance
        balance += Decimal(e["amount"])
        if before >= 0 > balance:
            since = datetime.fromisoformat(e["created_at"])
    return balance, since if balance < 0 else None


async def test_arrears_lists_negative_balances_with_days_since_they_went_negative(world: World) -> None:
    expected: dict[str, tuple[Decimal, int]] = {}
    for room, _estate, _, _ in ROOMS:
        balance, since = since_and_balance(await world.ledger(lease(room)))
        if since is not None:
            expected[lease(room)] = (balance, (datetime.now(UTC) - since) // timedelta(days=1))
    # EA-202 since 35 days, EB-101 since today (it was back at zero in between), EA-201 since today.
    assert {a: d for a, (_, d) in expected.items()} == {lease("EA-202"): 35, lease("EB-101"): 0, lease("EA-201"): 0}
    report = await world.ok("GET", "/v1/reports/arrears")
    got = {r["account_id"]: (Decimal(r["balance"]), r["days_in_arrears"]) for r in report["items"]}
    assert got == expected
    assert next(r["account_id"] for r in report["items"]) == lease("EA-202")  # longest first
    x = next(r for r in report["items"] if r["account_id"] == lease("EA-202"))
    assert (x["room_code"], x["tenant_id"], x["purse"], x["estate_id"]) == ("EA-202", "T-EA-202", "all", "EA")
    assert Decimal(x["owed"]) == -expected[lease("EA-202")][0] > Decimal("15.00")  # and its 公摊 share
    assert x["level"] == "exhausted"
    ea = await world.ok("GET", "/v1/reports/arrears", params={"estate_id": "EA", "sort": "owed"})
    assert [r["account_id"] for r in ea["items"]] == sorted(
        (a for a in expected if ESTATE[a.removeprefix("L-")] == "EA"), key=lambda a: -expected[a][0]
    )
    long = await world.ok("GET", "/v1/reports/arrears", params={"min_days": 30})
    assert [r["account_id"] for r in long["items"]] == [lease("EA-202")]
    assert (await world.ok("GET", "/v1/reports/arrears", params={"min_days": 36}))["items"] == []
    first = await world.ok("GET", "/v1/reports/arrears", params={"limit": 2})
    second = await world.ok("GET", "/v1/reports/arrears", params={"limit": 2, "offset": first["next_offset"]})
    assert first["next_offset"] == 2
    assert second["next_offset"] is None
    assert [r["account_id"] for r in first["items"] + second["items"]] == [r["account_id"] for r in report["items"]]


def local_day(at: datetime) -> date:
    return at.astimezone(SHANGHAI).date()


async def test_revenue_by_channel_and_local_day_balances_with_the_ledger(world: World) -> None:
    today = local_day(world.now)
    start, end = today - timedelta(days=1), today + timedelta(days=2)
    report = await world.ok("GET", "/v1/reports/revenue", params={"start": str(start), "end": str(end)})
    inside = [m for m in world.money if start <= local_day(m[4]) < end]
    channels = {r["channel"]: r for r in report["channels"]}
    assert set(channels) == {m[1] for m in inside}
    for channel, row in channels.items():
        mine = [m for m in inside if m[1] == channel]
        assert Decimal(row["payments"]) == sum(m[3] for m in mine if m[2] == "payment")
        assert Decimal(row["refunds"]) == -sum((m[3] for m in mine if m[2] == "refund"), Decimal(0))
        assert Decimal(row["corrections"]) == sum((m[3] for m in mine if m[2] == "correction"), Decimal(0))
        assert Decimal(row["net"]) == sum(m[3] for m in mine)
        assert row["count"] == sum(1 for m in mine if m[2] == "payment")
    assert Decimal(report["total"]["net"]) == sum(m[3] for m in inside) == Decimal("72.00")
    # It balances with the ledger: the channel accounts moved by exactly the net, negated.
    async with world.app.state.container.runtime.engine.connect() as conn:
        moved = (
            await conn.execute(
                text(
                    "SELECT sum(amount) FROM billing.ledger_entries WHERE (ledger_account LIKE 'clearing:%' "
                    "OR ledger_account = 'cash:counter') AND created_at >= :s AND created_at < :e"
                ),
                {
                    "s": datetime.combine(start, datetime.min.time(), SHANGHAI),
                    "e": datetime.combine(end, datetime.min.time(), SHANGHAI),
                },
            )
        ).scalar_one()
    assert -moved == Decimal(report["total"]["net"])
    assert sum(Decimal(d["net"]) for d in report["days"]) == Decimal(report["total"]["net"])
    # One estate: EB's Alipay payment is not EA's revenue.
    ea = await world.ok("GET", "/v1/reports/revenue", params={"estate_id": "EA", "start": str(start), "end": str(end)})
    assert Decimal(ea["total"]["net"]) == sum(m[3] for m in inside if ESTATE[m[0].removeprefix("L-")] == "EA")
    assert "alipay" not in {r["channel"] for r in ea["channels"]}
    assert "实收" in ea["summary_zh"]
    assert "net" in ea["summary_en"]


async def test_revenue_days_are_local_days(world: World) -> None:
    """A payment at 00:30 Shanghai time is booked on that local day, not on the UTC day before."""
    early = next(m for m in world.money if m[3] == Decimal("2.00"))
    assert early[4].astimezone(SHANGHAI).hour == 0
    day = local_day(early[4])
    on_day = await world.ok(
        "GET", "/v1/reports/revenue", params={"start": str(day), "end": str(day + timedelta(days=1))}
    )
    assert [(d["day"], d["channel"], d["payments"]) for d in on_day["days"]] == [(str(day), "cash", "2.00")]
    before = await world.ok(
        "GET", "/v1/reports/revenue", params={"start": str(day - timedelta(days=1)), "end": str(day)}
    )
    assert before["days"] == []
    assert before["total"]["net"] == "0.00"


async def test_consumption_by_building_with_common_meters_and_shared_areas(world: World) -> None:
    params = {"start": "2018-06-01", "end": "2018-07-01", "estate_id": "EA"}
    report = await world.ok("GET", "/v1/reports/consumption", params=params)
    expected: dict[tuple[str, str | None, str], tuple[Decimal, Decimal, int]] = {}
    for _meter, utility, room, first, last in METERS:
        if room is not None and ESTATE[room] != "EA":
            continue
        quantity = Decimal(last) - Decimal(first)
        key = ("building" if room else "common", BUILDING[room] if room else None, utility.value)
        q, c, n = expected.get(key, (Decimal(0), Decimal(0), 0))
        expected[key] = (q + quantity, c + quantity * PRICE[utility], n + 1)
    got = {
        (r["kind"], r["building_id"], r["utility"]): (Decimal(r["quantity"]), Decimal(r["cost"]), r["meters"])
        for r in report["rows"]
    }
    assert got == expected
    assert {r["utility"]: Decimal(r["quantity"]) for r in report["totals"]} == {
        "electricity": Decimal(77),
        "water": Decimal(3),
    }
    # 公摊: what the monthly run posted to each building's households, read from their ledgers.
    shares: dict[str, Decimal] = {}
    for room, estate, building, _ in ROOMS:
        if estate == "EA":
            posted = [e for e in await world.ledger(lease(room)) if e["kind"] == "shared_area"]
            shares[building] = shares.get(building, Decimal(0)) - sum(
                (Decimal(e["amount"]) for e in posted), Decimal(0)
            )
    assert sum(shares.values()) == Decimal("20.00")  # LIFT-A: 40 kWh × 0.50, shared out in full
    assert {r["building_id"]: Decimal(r["amount"]) for r in report["shared_area"]} == {
        b: v for b, v in shares.items() if v
    }
    water = await world.ok("GET", "/v1/reports/consumption", params={**params, "utility": "water"})
    assert [(r["building_id"], r["quantity"]) for r in water["rows"]] == [("EA-1", "3.000000")]
    everywhere = await world.ok("GET", "/v1/reports/consumption", params={"start": "2018-06-01", "end": "2018-07-01"})
    assert ("building", "EB-1", "electricity") in {
        (r["kind"], r["building_id"], r["utility"]) for r in everywhere["rows"]
    }
    july = await world.ok("GET", "/v1/reports/consumption", params={"start": "2018-07-01", "end": "2018-08-01"})
    assert july["rows"] == []
    assert july["shared_area"] == []


async def test_collection_rate_is_collected_over_billable(world: World) -> None:
    month = f"{world.now.astimezone(SHANGHAI):%Y-%m}"
    report = await world.ok("GET", "/v1/reports/collection-rate", params={"month": month})
    rows = {r["estate_id"]: r for r in report["estates"]}
    for estate in ("EA", "EB"):
        billable = Decimal(0)
        for room, in_estate, _, _ in ROOMS:
            if in_estate != estate:
                continue
            for e in await world.ledger(lease(room)):
                booked = datetime.fromisoformat(e["created_at"]).astimezone(SHANGHAI)
                if f"{booked:%Y-%m}" == month and e["kind"] in ("consumption", "shared_area", "fixed_fee"):
                    billable -= Decimal(e["amount"])
        collected = sum(
            (
                m[3]
                for m in world.money
                if ESTATE[m[0].removeprefix("L-")] == estate and f"{m[4].astimezone(SHANGHAI):%Y-%m}" == month
            ),
            Decimal(0),
        )
        row = rows[estate]
        assert (Decimal(row["billable"]), Decimal(row["collected"])) == (billable, collected), estate
        rate = (collected / billable).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        assert Decimal(row["collection_rate"]) == rate
        assert row["collection_rate_percent"] == f"{rate * 100:.2f}%"
    # June's usage (30.50 in EA) and its 公摊 (20.00) were posted this month.
    assert Decimal(rows["EA"]["billable"]) == Decimal("50.50")
    assert Decimal(rows["EA"]["subsidies"]) == Decimal("5.00")
    assert rows["EA"]["households_billed"] == 4  # EA-202 only pays its 公摊 share
    total = report["total"]
    assert Decimal(total["billable"]) == Decimal(rows["EA"]["billable"]) + Decimal(rows["EB"]["billable"])
    one = await world.ok("GET", "/v1/reports/collection-rate", params={"month": month, "estate_id": "EB"})
    assert [r["estate_id"] for r in one["estates"]] == ["EB"]
    assert one["total"]["billable"] == rows["EB"]["billable"]
    empty = await world.ok("GET", "/v1/reports/collection-rate", params={"month": "2018-01", "estate_id": "EA"})
    assert empty["total"]["collection_rate"] is None
    assert empty["total"]["billable"] == "0.00"
    assert "收缴率" in report["summary_zh"]
    assert "collection rate" in report["summary_en"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/reports/arrears", {"estate_id": "NOPE"}, 404),
        ("/v1/reports/arrears", {"min_days": -1}, 422),
        ("/v1/reports/arrears", {"sort": "phone"}, 422),
        ("/v1/reports/revenue", {"estate_id": "NOPE"}, 404),
        ("/v1/reports/revenue", {"start": "2026-13-01"}, 422),
        ("/v1/reports/revenue", {"start": "2020-01-01", "end": "2026-01-01"}, 422),  # wider than 400 days
        ("/v1/reports/revenue", {"start": "2026-02-01", "end": "2026-01-01"}, 422),
        ("/v1/reports/consumption", {"estate_id": "NOPE", "start": "2018-06-01", "end": "2018-07-01"}, 404),
        ("/v1/reports/consumption", {"utility": "gas"}, 422),
        ("/v1/reports/collection-rate", {}, 422),
        ("/v1/reports/collection-rate", {"month": "2026-13"}, 422),
        ("/v1/reports/collection-rate", {"month": "2026-12", "estate_id": "NOPE"}, 404),
    ],
)
async def test_bad_report_requests_are_refused(world: World, path: str, params: dict[str, Any], status: int) -> None:
    response = await world.client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
