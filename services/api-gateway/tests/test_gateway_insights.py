"""Insights through the gateway on the real platform: a tenant reads only their own household's report, staff
analyses need their action and stay inside the caller's estates, and insights' answers pass through."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import eventually, private_database

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"
PROPOSED = {
    "hourly_prices": ["0.30"] * 8 + ["0.70"] * 14 + ["0.30"] * 2,
    "tiers": {"blocks": [{"width": "180", "unit_price": "0"}], "above_price": "0.20"},
}


@dataclass
class Stack:
    platform: Platform
    ids: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, name: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.AsyncClient(base_url=self.platform.urls["gateway"], headers=headers, timeout=10)


async def _ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    sfx = secrets.token_hex(3)
    ids = {n: f"{n}-{sfx}" for n in ("E", "F", "R1", "R3", "T1", "T3", "L1", "L3", "A1", "A3", "M1", "M3")}
    # A database of its own: the sign-ins of every earlier test count against this address's limit.
    async with (
        private_database(pg_server_url, "shuidian_gw_insights") as database_url,
        platform(database_url, mqtt_url, instance=f"insights-{sfx}") as p,
    ):
        admin = p.staff
        for e, room, tenant, lease, account, meter in (
            ("E", "R1", "T1", "L1", "A1", "M1"),
            ("F", "R3", "T3", "L3", "A3", "M3"),
        ):
            estate = ids[e]
            await _ok(await admin.put(f"/v1/estates/{estate}", json={"name": f"小区 {estate}"}))
            await _ok(await admin.put(f"/v1/buildings/{estate}.1", json={"estate_id": estate, "name": "1 栋"}))
            await _ok(await admin.put(f"/v1/floors/{estate}.1.1", json={"building_id": f"{estate}.1", "level": 1}))
            body = {"floor_id": f"{estate}.1.1", "code": f"C{ids[room]}", "area_m2": "50.00"}
            await _ok(await admin.put(f"/v1/rooms/{ids[room]}", json=body))
            await _ok(await admin.put(f"/v1/rooms/{ids[room]}/meters/{ids[meter]}", json={"utility": "electricity"}))
            await _ok(await admin.put(f"/v1/tenants/{ids[tenant]}", json={"name": "租户", "phone": "13800000001"}))
            lease_body = {
                "tenant_id": ids[tenant],
                "room_id": ids[room],
                "move_in": "2026-01-01",
                "account_id": ids[account],
            }
            await _ok(await admin.put(f"/v1/leases/{ids[lease]}", json=lease_body))
        tariff = {"effective_from": "2020-01-01T00:00:00+08:00", "components": [{"kind": "flat", "unit_price": "0.56"}]}
        await _ok(await p.internal.post(f"{p.urls['billing']}/v1/tariffs/electricity/versions", json=tariff))
        stack = Stack(p, ids)
        roster: dict[str, dict[str, Any]] = {
            "manager": {"role": "estate_manager", "estates": [ids["E"]]},
            "cashier": {"role": "cashier", "estates": ["*"]},
            "tenant1": {"role": "tenant", "tenant_id": ids["T1"]},
        }
        for name, spec in roster.items():
            user = {"username": f"{name}-{sfx}", "password": PASSWORD, **spec}
            await _ok(await admin.post("/v1/users", json=user))
            token = await admin.post(
                "/v1/auth/token", data={"grant_type": "password", "username": user["username"], "password": PASSWORD}
            )
            stack.tokens[name] = (await _ok(token)).json()["access_token"]
        yield stack


async def test_a_tenant_reads_only_their_own_households_report(stack: Stack) -> None:
    ids = stack.ids
    async with stack.client("tenant1") as tenant:

        async def report() -> httpx.Response | None:
            response = await tenant.get(f"/v1/me/accounts/{ids['A1']}/insights")
            return response if response.status_code == 200 else None

        found = await eventually(report, "the household known to insights from billing's occupancy")
        other = await tenant.get(f"/v1/me/accounts/{ids['A3']}/insights")
        staff_route = await tenant.get("/v1/insights/trends")
    assert found.json()["account_id"] == ids["A1"]
    assert found.json()["estate_id"] == ids["E"]
    assert other.status_code == 404
    assert staff_route.status_code == 403


async def test_staff_analyses_stay_inside_the_callers_estates(stack: Stack) -> None:
    ids = stack.ids
    window: dict[str, str | int] = {"start": (datetime.now(UTC) - timedelta(days=1)).isoformat(), "days": 1}
    async with stack.client("manager") as manager:
        own = await manager.get(f"/v1/insights/meters/{ids['M1']}/readings", params=window)
        by_room = await manager.get(f"/v1/insights/rooms/{ids['R1']}/readings", params=window)
        foreign = await manager.get(f"/v1/insights/meters/{ids['M3']}/readings", params=window)
        csv = await manager.get(f"/v1/insights/meters/{ids['M1']}/readings", params={**window, "format": "csv"})
        what_if = await manager.post("/v1/insights/what-if", json={"utility": "electricity", "proposed": PROPOSED})
        elsewhere = await manager.post(
            "/v1/insights/what-if", json={"utility": "electricity", "proposed": PROPOSED, "estate_id": ids["F"]}
        )
        floats = await manager.post(
            "/v1/insights/what-if", json={"utility": "electricity", "proposed": {"flat_price": 0.5}}
        )
        days = await manager.get(
            "/v1/insights/line-loss/groups/G1/days", params={"start": "2026-01-01", "end": "2026-01-02"}
        )
        trends = await manager.get("/v1/insights/trends", params={"format": "csv"})
    async with stack.client("cashier") as cashier:
        refused = await cashier.get("/v1/insights/trends")
    assert own.status_code == 200, own.text
    assert own.json()["raw"] == []
    assert by_room.status_code == 200, by_room.text
    assert by_room.json()["meters"] == [ids["M1"]]
    assert foreign.status_code == 404
    assert csv.headers["content-type"].startswith("text/csv")
    assert what_if.status_code == 200, what_if.text
    assert what_if.json()["households"] == 0  # no history yet: nothing re-priced, nothing invented
    assert elsewhere.status_code == 403
    assert floats.status_code == 422  # prices are decimal strings
    assert trends.text.startswith("period,quantity")
    assert days.status_code == 403  # line-loss groups span feeders: all-estates roles only
    assert refused.status_code == 403  # a cashier has no reports:read
