"""Done when an operator with two cities and shops beside homes bills each correctly (issue #19, part A).

Two estates in two cities with different water prices, homes on tiered household electricity and a shop
(非居民) beside them on a flat non-residential price; the ledger is checked to the fen against an independent
computation written out in this file. Then a retroactive price decision (调价追溯) for one city's water is
previewed, committed once, replayed, and refused where it would correct twice or correct an open period.
Real PostgreSQL (a database of its own: the default plan is part of the scenario) and a real broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.infra import free_port
from shuidian_devstack.platform import _serve
from shuidian_devstack.pytest_plugin import private_database
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
CST = timedelta(hours=8)
FEN = Decimal("0.01")
START = datetime(2026, 11, 2, tzinfo=UTC) - CST  # 2026-11-02 00:00 in Shanghai
NOVEMBER = ("2026-11-01T00:00:00+08:00", "2026-12-01T00:00:00+08:00")


@dataclass
class Service:
    http: httpx.AsyncClient
    billing: Billing

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
        return response.json() if response.content else None

    async def read(self, meter: str, utility: Utility, hours: int, value: str) -> None:
        register = "energy_active_import_total" if utility is Utility.ELECTRICITY else "water_volume_total"
        reading = Reading.create(meter, utility, START + timedelta(hours=hours), registers={register: Decimal(value)})
        await self.billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(reading,)), "")

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.billing.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar_one()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def service(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Service]:
    async with private_database(pg_server_url, "shuidian_plans") as database_url:
        port = free_port()
        settings = BillingSettings(
            environment="test",
            database_url=SecretStr(database_url),
            mqtt_url=mqtt_url,
            mqtt_clean_session=True,
            instance_id=f"plans-{port}",
            http_port=port,
            flush_interval_seconds=3600,
        )
        app = create_app(settings)
        server, task = await _serve(app, port)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=30, auth=infra.service_auth("billing")
            ) as http:
                yield Service(http, app.state.container.billing)
        finally:
            server.should_exit = True
            await task


# --- the independent computation: prices written out by hand, rounding by the ledger's rule -----------------


def flat(quantity: str, *prices: str) -> Decimal:
    return sum((Decimal(quantity) * Decimal(p) for p in prices), Decimal(0))


def tiered(steps: list[str], first_width: Decimal, low: str, high: str) -> Decimal:
    """A month's steps priced in two blocks: the first `first_width` units at `low`, the rest at `high`."""
    used, total = Decimal(0), Decimal(0)
    for step in map(Decimal, steps):
        in_first = max(Decimal(0), min(step, first_width - used))
        total += in_first * Decimal(low) + (step - in_first) * Decimal(high)
        used += step
    return total


def posted(exact: Decimal) -> Decimal:
    """What a meter's hourly postings add up to: whole fen toward zero, each hour's remainder carried on."""
    return exact.quantize(FEN, rounding=ROUND_DOWN)


PLANS: list[tuple[str, dict[str, Any], str, list[dict[str, Any]]]] = [
    ("hz-water", {"name": "杭州 水价", "estate_id": "HZ"}, "water", [{"kind": "flat", "unit_price": "3.40"}]),
    (
        "sz-water",
        {"name": "深圳 水价", "estate_id": "SZ"},
        "water",
        [{"kind": "flat", "unit_price": "4.20"}, {"kind": "flat", "name": "sewage", "unit_price": "0.95"}],
    ),
    (
        "hz-home-power",
        {"name": "杭州 居民阶梯电价", "estate_id": "HZ", "customer_class": "residential"},
        "electricity",
        [
            {
                "kind": "tiered",
                "base_household_size": 2,
                "blocks": [
                    {"label": "一档", "width": "100", "unit_price": "0.538", "extra_width_per_person": "25"},
                    {"label": "二档", "width": None, "unit_price": "0.838"},
                ],
            }
        ],
    ),
    (
        "hz-shop-power",
        {"name": "杭州 非居民电价", "estate_id": "HZ", "customer_class": "non_residential"},
        "electricity",
        [
            {"kind": "flat", "unit_price": "0.92"},
            {"kind": "fixed", "name": "capacity_fee", "amount_per_month": "30.00"},
        ],
    ),
]
# room: estate, household size, class, electricity steps, water steps (registers from 0 every 3 hours)
ROOMS: dict[str, tuple[str, int, str, list[str], list[str]]] = {
    "hz-101": ("HZ", 3, "residential", ["50", "70", "40"], ["1.3", "1.817"]),
    "hz-102": ("HZ", 1, "residential", ["60", "60"], ["1.5"]),
    "hz-shop": ("HZ", 1, "non_residential", ["150", "150"], ["4.25"]),
    "sz-201": ("SZ", 2, "residential", ["60", "60"], ["2.345"]),
}


def expected_exact(room: str) -> dict[Utility, Decimal]:
    estate, size, cls, power, water = ROOMS[room]
    water_total = str(sum(map(Decimal, water), Decimal(0)))
    if estate == "SZ":
        # No electricity plan of SZ's own: the default plan's 0.613; water and sewage from SZ's plan.
        return {
            Utility.ELECTRICITY: flat(str(sum(map(Decimal, power), Decimal(0))), "0.613"),
            Utility.WATER: flat(water_total, "4.20", "0.95"),
        }
    if cls == "non_residential":
        electricity = flat(str(sum(map(Decimal, power), Decimal(0))), "0.92")
    else:
        electricity = tiered(power, Decimal(100) + Decimal(25) * max(0, size - 2), "0.538", "0.838")
    return {Utility.ELECTRICITY: electricity, Utility.WATER: flat(water_total, "3.40")}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def city(service: Service) -> dict[str, str]:
    """Both cities priced, leased and read through November; every ended hour posted. Room → account."""
    ok = service.ok
    for utility, price in (("electricity", "0.613"), ("water", "4.50")):
        await ok(
            "POST",
            f"/v1/tariffs/{utility}/versions",
            json={"effective_from": "2020-01-01T00:00:00+08:00", "components": [{"kind": "flat", "unit_price": price}]},
        )
    for estate in ("HZ", "SZ"):
        await ok("PUT", f"/v1/estates/{estate}", json={"name": f"{estate} 公租房"})
        await ok("PUT", f"/v1/buildings/{estate}-1", json={"estate_id": estate, "name": "1 栋"})
        await ok("PUT", f"/v1/floors/{estate}-1-1", json={"building_id": f"{estate}-1", "level": 1})
    for plan_id, scope, utility, components in PLANS:
        await ok("PUT", f"/v1/tariff-plans/{plan_id}", json=scope)
        body = {"effective_from": "2026-01-01T00:00:00+08:00", "components": components}
        added = await ok("POST", f"/v1/tariff-plans/{plan_id}/versions/{utility}", json=body)
        assert added["version"] == 1
    accounts: dict[str, str] = {}
    for room, (estate, size, cls, _, _) in ROOMS.items():
        await ok(
            "PUT",
            f"/v1/rooms/{room}",
            json={"floor_id": f"{estate}-1-1", "code": room, "area_m2": "40.00", "household_size": size},
        )
        await ok("PUT", f"/v1/rooms/{room}/customer-class", json={"customer_class": cls})
        await ok("PUT", f"/v1/tenants/t-{room}", json={"name": "住户"})
        lease = {"tenant_id": f"t-{room}", "room_id": room, "move_in": "2026-10-01"}
        accounts[room] = (await ok("PUT", f"/v1/leases/L-{room}", json=lease))["account_id"]
        for utility in Utility:
            await ok("PUT", f"/v1/rooms/{room}/meters/{room}-{utility.value}", json={"utility": utility.value})
    for room, (_, _, _, power, water) in ROOMS.items():
        for utility, steps in ((Utility.ELECTRICITY, power), (Utility.WATER, water)):
            register = Decimal(0)
            await service.read(f"{room}-{utility.value}", utility, 0, "0")
            for index, step in enumerate(steps, start=1):
                register += Decimal(step)
                await service.read(f"{room}-{utility.value}", utility, 3 * index, str(register))
    await service.billing.poster.flush(before=datetime.now(UTC))
    return accounts


async def household_balance(service: Service, account: str) -> Decimal:
    balance: Decimal = await service.scalar(
        "SELECT coalesce(sum(amount), 0) FROM billing.ledger_entries WHERE ledger_account = :a",
        a=f"household:{account}",
    )
    cached = Decimal((await service.ok("GET", f"/v1/accounts/{account}"))["balance"])
    assert cached == balance  # the cached balance is the sum of the entries
    return balance


async def test_two_cities_and_a_shop_beside_homes_are_each_billed_to_the_fen(
    service: Service, city: dict[str, str]
) -> None:
    for room, account in city.items():
        exact = expected_exact(room)
        charged = {
            u: await service.scalar(
                "SELECT coalesce(sum(amount), 0) FROM billing.charge_lines WHERE meter_id = :m",
                m=f"{room}-{u.value}",
            )
            for u in Utility
        }
        assert charged == exact, room
        assert await household_balance(service, account) == -(
            posted(exact[Utility.ELECTRICITY]) + posted(exact[Utility.WATER])
        ), room
    # The figures themselves, so a wrong independent computation cannot hide a wrong bill.
    assert expected_exact("hz-shop") == {Utility.ELECTRICITY: Decimal("276.00"), Utility.WATER: Decimal("14.450")}
    assert expected_exact("hz-101")[Utility.ELECTRICITY] == Decimal("125") * Decimal("0.538") + Decimal(35) * Decimal(
        "0.838"
    )
    assert posted(expected_exact("hz-101")[Utility.WATER]) == Decimal("10.59")  # 3.117 m³ × 3.40 = 10.5978
    assert posted(expected_exact("sz-201")[Utility.WATER]) == Decimal("12.07")  # 2.345 × 5.15 = 12.07675


async def test_every_charge_says_which_plan_priced_it_and_why(service: Service, city: dict[str, str]) -> None:
    expected = {
        "hz-shop-electricity": ("hz-shop-power", "estate HZ, class non_residential"),
        "hz-101-electricity": ("hz-home-power", "estate HZ, class residential"),
        "sz-201-electricity": ("default", "no more specific plan covers this meter"),
        "sz-201-water": ("sz-water", "estate SZ, and this is the most specific plan"),
    }
    for meter, (plan, why) in expected.items():
        txn = await service.scalar(
            "SELECT txn_id FROM billing.ledger_entries WHERE meter_id = :m AND kind = 'consumption' LIMIT 1", m=meter
        )
        explained = await service.ok("GET", f"/v1/ledger/transactions/{txn}/explain")
        [used] = explained["priced_under"]
        assert used["plan_id"] == plan
        assert used["explanation"].startswith(f"priced under plan {plan} version 1 because"), used
        assert why in used["explanation"]
        assert used["explanation_zh"].startswith("按价格方案")
        assert explained["tariff_versions"][str(used["tariff_id"])]["plan"]["plan_id"] == plan


async def test_a_non_residential_plan_refuses_tiers_and_a_used_plan_keeps_its_scope(
    service: Service, city: dict[str, str]
) -> None:
    tiers = {
        "effective_from": "2027-01-01T00:00:00+08:00",
        "components": [{"kind": "tiered", "blocks": [{"label": "一档", "width": None, "unit_price": "1"}]}],
    }
    refused = await service.http.post("/v1/tariff-plans/hz-shop-power/versions/electricity", json=tiers)
    assert refused.status_code == 422, refused.text
    moved = await service.http.put("/v1/tariff-plans/hz-water", json={"name": "x", "estate_id": "SZ"})
    assert (moved.status_code, moved.json()["code"]) == (409, "plan_scope_fixed")
    twin = await service.http.put("/v1/tariff-plans/hz-water-2", json={"name": "x", "estate_id": "HZ"})
    assert (twin.status_code, twin.json()["code"]) == (409, "plan_scope_taken")
    renamed = await service.ok("PUT", "/v1/tariff-plans/hz-water", json={"name": "杭州 水价 2026", "estate_id": "HZ"})
    assert renamed["name"] == "杭州 水价 2026"
    listed = await service.ok("GET", "/v1/tariff-plans", params={"estate_id": "SZ"})
    assert [p["plan_id"] for p in listed["items"]] == ["default", "sz-water"]
    # The original per-utility routes are the default plan's.
    legacy = await service.ok("GET", "/v1/tariffs/water/versions")
    assert [v["components"][0]["unit_price"] for v in legacy] == ["4.500000"] or [
        Decimal(v["components"][0]["unit_price"]) for v in legacy
    ] == [Decimal("4.50")]
    unknown = await service.http.put("/v1/meters/nope/customer-class", json={"customer_class": "common"})
    assert unknown.status_code == 404


def correction(price: str, reason: str = "2026 年 11 月水价下调（杭发改价格〔2026〕9 号）") -> dict[str, Any]:
    return {
        "plan_id": "hz-water",
        "utility": "water",
        "period_start": NOVEMBER[0],
        "period_end": NOVEMBER[1],
        "components": [{"kind": "flat", "unit_price": price}],
        "reason": reason,
    }


async def test_a_retroactive_price_decision_is_previewed_then_posted_once(
    service: Service, city: dict[str, str]
) -> None:
    run = uuid.uuid4()
    before = {room: await household_balance(service, account) for room, account in city.items()}
    entries = await service.scalar("SELECT count(*) FROM billing.ledger_entries")
    lines = await service.scalar("SELECT coalesce(sum(amount), 0) FROM billing.charge_lines")

    preview = await service.ok("POST", f"/v1/price-corrections/{run}/preview", json=correction("3.10"))
    # Each HZ household: its November water at 3.10 instead of 3.40, posted toward zero.
    water = {room: sum(map(Decimal, ROOMS[room][4]), Decimal(0)) for room in ("hz-101", "hz-102", "hz-shop")}
    want = {city[room]: (q * Decimal("-0.30")).quantize(FEN, rounding=ROUND_DOWN) for room, q in water.items()}
    assert {h["account_id"]: Decimal(h["posted"]) for h in preview["households"]} == want
    assert want == {
        city["hz-101"]: Decimal("-0.93"),
        city["hz-102"]: Decimal("-0.45"),
        city["hz-shop"]: Decimal("-1.27"),
    }
    assert preview["committed"] is False
    assert await service.scalar("SELECT count(*) FROM billing.ledger_entries") == entries  # a preview writes nothing
    assert await service.scalar("SELECT count(*) FROM billing.price_corrections") == 0

    committed = await service.ok("POST", f"/v1/price-corrections/{run}", json=correction("3.10"))
    assert committed["committed"] is True
    assert committed["replayed"] is False
    assert committed["operator"]  # who did it, from the caller's credential
    assert {h["account_id"]: Decimal(h["posted"]) for h in committed["households"]} == want
    for room, account in city.items():
        assert await household_balance(service, account) == before[room] - want.get(account, Decimal(0)), room
    # History is not rewritten: the charge lines are as they were and entries were only added (one txn each).
    assert await service.scalar("SELECT coalesce(sum(amount), 0) FROM billing.charge_lines") == lines
    assert await service.scalar("SELECT count(*) FROM billing.ledger_entries") == entries + 2 * len(want)

    replay = await service.ok("POST", f"/v1/price-corrections/{run}", json=correction("3.10"))
    assert replay["replayed"] is True
    assert replay["households"] == committed["households"]
    assert await service.scalar("SELECT count(*) FROM billing.ledger_entries") == entries + 2 * len(want)
    assert (await service.ok("POST", f"/v1/price-corrections/{run}/preview", json=correction("3.10")))["committed"]

    other = await service.http.post(f"/v1/price-corrections/{run}", json=correction("2.90"))
    assert (other.status_code, other.json()["code"]) == (409, "run_id_reused")
    twice = await service.http.post(f"/v1/price-corrections/{uuid.uuid4()}", json=correction("2.90"))
    assert (twice.status_code, twice.json()["code"]) == (409, "correction_overlaps")
    future = {
        **correction("2.90"),
        "period_start": "2026-12-01T00:00:00+08:00",
        "period_end": "2099-01-01T00:00:00+08:00",
    }
    open_period = await service.http.post(f"/v1/price-corrections/{uuid.uuid4()}", json=future)
    assert (open_period.status_code, open_period.json()["code"]) == (409, "period_open")
    ragged = {**correction("2.90"), "period_start": "2026-11-01T00:30:00+08:00"}
    assert (await service.http.post(f"/v1/price-corrections/{uuid.uuid4()}/preview", json=ragged)).status_code == 422

    listed = await service.ok("GET", "/v1/price-corrections", params={"plan_id": "hz-water"})
    assert [r["run_id"] for r in listed["items"]] == [str(run)]
    assert (await service.ok("GET", f"/v1/price-corrections/{run}"))["posted_total"] == str(sum(want.values()))
    memo = await service.scalar(
        "SELECT memo FROM billing.ledger_entries WHERE txn_id = :t LIMIT 1",
        t=uuid.UUID(committed["households"][0]["txn_id"]),
    )
    assert memo.startswith("调价追溯")
    assert "杭发改价格" in memo


async def test_the_monthly_run_charges_each_household_the_fixed_fees_of_its_own_plan(
    service: Service, city: dict[str, str]
) -> None:
    shop_before = await household_balance(service, city["hz-shop"])
    home_before = await household_balance(service, city["hz-101"])
    run = await service.ok("POST", "/v1/estates/HZ/months/2026-11/run")
    fees = {(line["account_id"], line["component"]): Decimal(line["amount"]) for line in run["fixed_fee_lines"]}
    # Only the shop's plan has a fee; the homes' plan and the default plan have none.
    assert fees == {(city["hz-shop"], "capacity_fee"): Decimal("30.00")}
    assert await household_balance(service, city["hz-shop"]) == shop_before - Decimal("30.00")
    assert await household_balance(service, city["hz-101"]) == home_before
