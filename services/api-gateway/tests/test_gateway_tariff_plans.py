"""The tariff plan and price correction routes (routes_tariff_plans.py) in front of the REAL backends: an estate
manager edits their own estate's plans and nothing else, reads the plans spanning every estate but cannot change
them; finance corrects a closed period once (调价追溯) and the run id replays; every refusal is the right one."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio

from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import private_database
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"
ROSTER: dict[str, tuple[str, list[str]]] = {
    "hz_manager": ("estate_manager", ["HZ"]),
    "sz_manager": ("estate_manager", ["SZ"]),
    "finance": ("finance", ["*"]),
    "cashier": ("cashier", ["*"]),
}
NOV_2 = datetime(2026, 11, 2, tzinfo=UTC) - timedelta(hours=8)
SHOP_KWH = ["150", "137.5"]  # two steps of the shop's meter, three hours apart


@dataclass
class Stack:
    platform: Platform
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, name: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.AsyncClient(base_url=self.platform.urls["gateway"], headers=headers, timeout=60)


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.content else None


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    """Estates HZ and SZ with a shop in HZ and a home in SZ, the shop's November readings billed and posted."""
    sfx = secrets.token_hex(3)
    overrides = {"gateway": {"login_attempts_per_minute": 10_000}, "billing": {"flush_interval_seconds": 3600}}
    async with (
        private_database(pg_server_url, "shuidian_gw_plans") as database_url,
        platform(database_url, mqtt_url, instance=f"plans-{sfx}", overrides=overrides) as p,
        # The staff key, patient: on a loaded machine a first answer or a password hash can take seconds.
        httpx.AsyncClient(base_url=p.urls["gateway"], headers=p.staff.headers, timeout=120) as admin,
    ):
        for utility, price in (("electricity", "0.613"), ("water", "4.50")):
            body = {
                "effective_from": "2020-01-01T00:00:00+08:00",
                "components": [{"kind": "flat", "unit_price": price}],
            }
            _ok(await admin.post(f"/v1/tariffs/{utility}/versions", json=body))
        for estate, room in (("HZ", "hz-shop"), ("SZ", "sz-201")):
            _ok(await admin.put(f"/v1/estates/{estate}", json={"name": f"{estate} 公租房"}))
            _ok(await admin.put(f"/v1/buildings/{estate}-1", json={"estate_id": estate, "name": "1 栋"}))
            _ok(await admin.put(f"/v1/floors/{estate}-1-1", json={"building_id": f"{estate}-1", "level": 1}))
            _ok(
                await admin.put(
                    f"/v1/rooms/{room}", json={"floor_id": f"{estate}-1-1", "code": room, "area_m2": "40.00"}
                )
            )
            _ok(await admin.put(f"/v1/tenants/t-{room}", json={"name": "住户", "phone": "13800000009"}))
            lease = {"tenant_id": f"t-{room}", "room_id": room, "move_in": "2026-10-01", "account_id": f"A-{room}"}
            _ok(await admin.put(f"/v1/leases/L-{room}", json=lease))
            _ok(await admin.put(f"/v1/rooms/{room}/meters/{room}-e", json={"utility": "electricity"}))
        stack = Stack(p)
        for name, (role, estates) in ROSTER.items():
            username = f"plans-{name}-{sfx}"
            user = {"username": username, "password": PASSWORD, "role": role, "estates": estates}
            _ok(await admin.post("/v1/users", json=user))
            form = {"grant_type": "password", "username": username, "password": PASSWORD}
            stack.tokens[name] = _ok(await admin.post("/v1/auth/token", data=form))["access_token"]
        yield stack


async def _bill_the_shop(stack: Stack) -> None:
    billing = stack.platform.apps["billing"].state.container.billing
    register = Decimal(0)
    for index, step in enumerate(["0", *SHOP_KWH]):
        register += Decimal(step)
        reading = Reading.create(
            "hz-shop-e",
            Utility.ELECTRICITY,
            NOV_2 + timedelta(hours=3 * index),
            registers={"energy_active_import_total": register},
        )
        await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(reading,)), "")
    await billing.poster.flush(before=datetime.now(UTC))


async def test_an_estate_manager_edits_their_own_estate_plans_only(stack: Stack) -> None:
    shop_plan = {"name": "杭州 非居民电价", "estate_id": "HZ", "customer_class": "non_residential"}
    async with stack.client("hz_manager") as hz, stack.client("sz_manager") as sz, stack.client("cashier") as cashier:
        created = _ok(await hz.put("/v1/tariff-plans/hz-shop-power", json=shop_plan))
        assert created["customer_class"] == "non_residential"
        assert "class non_residential" in created["applies"]
        version = {
            "effective_from": "2026-01-01T00:00:00+08:00",
            "components": [{"kind": "flat", "unit_price": "0.92"}],
        }
        added = _ok(await hz.post("/v1/tariff-plans/hz-shop-power/versions/electricity", json=version))
        assert (added["plan_id"], added["version"]) == ("hz-shop-power", 1)
        tiers = {
            "effective_from": "2027-01-01T00:00:00+08:00",
            "components": [{"kind": "tiered", "blocks": [{"label": "一档", "width": None, "unit_price": "1.00"}]}],
        }
        assert (await hz.post("/v1/tariff-plans/hz-shop-power/versions/electricity", json=tiers)).status_code == 422
        _ok(await hz.put("/v1/rooms/hz-shop/customer-class", json={"customer_class": "non_residential"}))
        _ok(await hz.put("/v1/leases/L-hz-shop/customer-class", json={"customer_class": None}))
        meter = _ok(await hz.put("/v1/meters/hz-shop-e/customer-class", json={"customer_class": "non_residential"}))
        assert meter == {"target": "meter", "id": "hz-shop-e", "customer_class": "non_residential"}

        # Another estate's plan, room or meter: refused or invisible.
        other = await hz.put("/v1/tariff-plans/sz-x", json={"name": "x", "estate_id": "SZ"})
        assert other.status_code == 403
        everywhere = await hz.put("/v1/tariff-plans/all-shops", json={"name": "x", "customer_class": "non_residential"})
        assert everywhere.status_code == 403
        default_version = {
            "effective_from": "2030-01-01T00:00:00+08:00",
            "components": [{"kind": "flat", "unit_price": "1"}],
        }
        assert (await hz.post("/v1/tariff-plans/default/versions/water", json=default_version)).status_code == 403
        assert (await hz.put("/v1/rooms/sz-201/customer-class", json={"customer_class": "common"})).status_code == 404
        assert (await sz.get("/v1/tariff-plans/hz-shop-power")).status_code == 404
        assert (await sz.get("/v1/tariff-plans/hz-shop-power/versions/electricity")).status_code == 404
        taken = await sz.put("/v1/tariff-plans/hz-shop-power", json={"name": "mine now", "estate_id": "SZ"})
        assert taken.status_code == 404

        # Reads: one's own estate's plans and those spanning every estate.
        assert [p["plan_id"] for p in _ok(await hz.get("/v1/tariff-plans"))["items"]] == ["default", "hz-shop-power"]
        assert [p["plan_id"] for p in _ok(await sz.get("/v1/tariff-plans"))["items"]] == ["default"]
        versions = _ok(await hz.get("/v1/tariff-plans/default/versions/electricity"))
        assert [v["version"] for v in versions] == [1]
        # A cashier reads tariffs but edits no plan.
        assert len(_ok(await cashier.get("/v1/tariff-plans"))["items"]) == 2
        assert (await cashier.put("/v1/tariff-plans/hz-shop-power", json=shop_plan)).status_code == 403


async def test_finance_corrects_a_closed_period_once(stack: Stack) -> None:
    await _bill_the_shop(stack)
    run = uuid.uuid4()
    body = {
        "plan_id": "hz-shop-power",
        "utility": "electricity",
        "period_start": "2026-11-01T00:00:00+08:00",
        "period_end": "2026-12-01T00:00:00+08:00",
        "components": [{"kind": "flat", "unit_price": "1.00"}],
        "reason": "非居民电价上调追溯（2026 年 11 月）",
    }
    kwh = sum(map(Decimal, SHOP_KWH), Decimal(0))
    owed = (kwh * Decimal("0.08")).quantize(Decimal("0.01"), rounding=ROUND_DOWN)  # 287.5 kWh × 0.08 = 23.00
    async with stack.client("finance") as finance, stack.client("hz_manager") as hz, stack.client("sz_manager") as sz:
        assert (await hz.post(f"/v1/price-corrections/{run}/preview", json=body)).status_code == 403
        preview = _ok(await finance.post(f"/v1/price-corrections/{run}/preview", json=body))
        assert preview["committed"] is False
        assert [(h["account_id"], Decimal(h["posted"])) for h in preview["households"]] == [("A-hz-shop", owed)]
        assert Decimal(preview["households"][0]["old_amount"]) == kwh * Decimal("0.92")
        before = Decimal(_ok(await finance.get("/v1/accounts/A-hz-shop"))["balance"])

        committed = await finance.post(f"/v1/price-corrections/{run}", json=body)
        assert committed.status_code == 201, committed.text
        assert committed.json()["replayed"] is False
        after = Decimal(_ok(await finance.get("/v1/accounts/A-hz-shop"))["balance"])
        assert after == before - owed
        replay = _ok(await finance.post(f"/v1/price-corrections/{run}", json=body))
        assert replay["replayed"] is True
        assert Decimal(_ok(await finance.get("/v1/accounts/A-hz-shop"))["balance"]) == after
        changed = await finance.post(f"/v1/price-corrections/{run}", json={**body, "reason": "另一份文件"})
        assert (changed.status_code, changed.json()["code"]) == (409, "run_id_reused")

        # The run is seen by those who see the plan.
        assert [r["run_id"] for r in _ok(await hz.get("/v1/price-corrections"))["items"]] == [str(run)]
        assert _ok(await sz.get("/v1/price-corrections"))["items"] == []
        assert (await sz.get(f"/v1/price-corrections/{run}")).status_code == 404
        assert _ok(await hz.get(f"/v1/price-corrections/{run}"))["posted_total"] == str(owed)
