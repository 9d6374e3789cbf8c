"""Staff listings and reports through the gateway in front of the real billing service (its own
database): paging and sorting done by billing, estate scoping (an estate manager sees only their
estate, a tenant token is refused), and billing's 404 and 422 problems passed through."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_gateway.testing import Harness, free_port, gateway_harness, serve
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
JUNE = datetime(2018, 6, 1, tzinfo=SHANGHAI)
# room, estate, area, kWh used in June 2018 at 0.50 (E1 is the harness manager's estate)
ROOMS = [("R-E1-1", "E1", "9.50", 20), ("R-E1-2", "E1", "157.20", 4), ("R-E1-3", "E1", "52.40", 0)]
ROOMS += [("R-E2-1", "E2", "60.00", 40)]


async def _ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


async def _seed(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Two estates with rooms, households and June 2018 consumption, through billing's API."""
    body = {"unit_price": "0.50", "effective_from": "2018-01-01T00:00:00+08:00"}
    await _ok(client, "PUT", "/v1/tariffs/electricity", json=body)
    readings = []
    for room, estate, area, used in ROOMS:
        await _ok(client, "PUT", f"/v1/estates/{estate}", json={"name": f"小区{estate}"})
        await _ok(client, "PUT", f"/v1/buildings/{estate}-B1", json={"estate_id": estate, "name": "1栋"})
        await _ok(client, "PUT", f"/v1/floors/{room}-F", json={"building_id": f"{estate}-B1", "level": int(room[-1])})
        await _ok(client, "PUT", f"/v1/rooms/{room}", json={"floor_id": f"{room}-F", "code": room, "area_m2": area})
        await _ok(client, "PUT", f"/v1/tenants/T-{room}", json={"name": f"住户{room}"})
        lease = {"tenant_id": f"T-{room}", "room_id": room, "move_in": "2018-01-01"}
        await _ok(client, "PUT", f"/v1/leases/L-{room}", json=lease)
        await _ok(client, "PUT", f"/v1/rooms/{room}/meters/M-{room}", json={"utility": "electricity"})
        for at, value in ((JUNE + timedelta(hours=1), 100), (JUNE + timedelta(days=10), 100 + used)):
            registers = {"energy_active_import_total": Decimal(value)}
            readings.append(Reading.create(f"M-{room}", Utility.ELECTRICITY, at, registers=registers))
    billing: Billing = app.state.container.billing
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=tuple(readings)), "")
    await billing.poster.flush(before=datetime(2018, 7, 1, tzinfo=SHANGHAI))


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(pg_server_url: str, database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    name = f"shuidian_gw_reports_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    port = free_port()
    billing = billing_app(
        BillingSettings(
            environment="test",
            database_url=SecretStr(url),
            mqtt_url=mqtt_url,
            instance_id=f"billing-gw-reports-{port}",
            mqtt_clean_session=True,
            http_port=port,
        )
    )
    try:
        async with (
            serve(billing, port),
            gateway_harness(database_url, mqtt_url, billing_url=f"http://127.0.0.1:{port}") as h,
        ):
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", auth=infra.service_auth("billing")
            ) as direct:
                await _seed(billing, direct)
            async with h.client("cashier") as cashier:
                paid = await cashier.post(
                    "/v1/accounts/L-R-E1-2/topups", json={"amount": "30.00"}, headers={"Idempotency-Key": "gw-rep-01"}
                )
                assert paid.status_code == 201, paid.text
            yield h
    finally:
        await infra.drop_database(pg_server_url, name)


async def test_rooms_are_paged_and_sorted_by_billing(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        first = await admin.get("/v1/rooms", params={"estate_id": "E1", "sort": "-area", "limit": 2})
        second = await admin.get(
            "/v1/rooms", params={"estate_id": "E1", "sort": "-area", "limit": 2, "cursor": first.json()["next_cursor"]}
        )
        floor = await admin.get("/v1/rooms", params={"floor": 2})
    assert first.status_code == 200, first.text
    areas = [Decimal(r["area_m2"]) for r in first.json()["items"] + second.json()["items"]]
    # Numeric order ("9.50" would sort first as text), across pages, without repeats.
    assert areas == sorted((Decimal(a) for _, e, a, _ in ROOMS if e == "E1"), reverse=True)
    assert second.json()["next_cursor"] is None
    assert [r["room_id"] for r in floor.json()["items"]] == ["R-E1-2"]


async def test_an_estate_manager_sees_only_their_estate(gw: Harness) -> None:
    month = f"{datetime.now(UTC).astimezone(SHANGHAI):%Y-%m}"
    async with gw.client("manager_e1") as manager:
        rooms = await manager.get("/v1/rooms")
        other_rooms = await manager.get("/v1/rooms", params={"estate_id": "E2"})
        estates = await manager.get("/v1/estates")
        other_estate = await manager.get("/v1/estates/E2")
        arrears = await manager.get("/v1/reports/arrears")
        other_arrears = await manager.get("/v1/reports/arrears", params={"estate_id": "E2"})
        revenue = await manager.get("/v1/reports/revenue")
        other_revenue = await manager.get("/v1/reports/revenue", params={"estate_id": "E2"})
        rate = await manager.get("/v1/reports/collection-rate", params={"month": month})
        usage = await manager.get("/v1/reports/consumption", params={"start": "2018-06-01", "end": "2018-07-01"})
        payments = await manager.get("/v1/payments")
        other_payments = await manager.get("/v1/payments", params={"estate_id": "E2", "account_id": "L-R-E2-1"})
    assert sorted(r["room_id"] for r in rooms.json()["items"]) == [r for r, e, _, _ in ROOMS if e == "E1"]
    assert [e["estate_id"] for e in estates.json()["items"]] == ["E1"]
    assert {r["estate_id"] for r in arrears.json()["items"]} == {"E1"}
    # E1's households in arrears: those whose June usage exceeded what they paid.
    assert {r["account_id"] for r in arrears.json()["items"]} == {"L-R-E1-1"}
    assert revenue.json()["estate_id"] == "E1"
    assert revenue.json()["total"]["net"] == "30.00"
    assert [e["estate_id"] for e in rate.json()["estates"]] == ["E1"]
    assert rate.json()["total"]["billable"] == "12.00"  # (20 + 4) kWh × 0.50
    assert {r["building_id"] for r in usage.json()["rows"]} == {"E1-B1"}
    assert [p["account_id"] for p in payments.json()["items"]] == ["L-R-E1-2"]
    for refused in (other_rooms, other_arrears, other_revenue, other_payments):
        assert refused.status_code == 403, refused.text
    assert other_estate.status_code == 404


async def test_all_estates_roles_see_every_estate(gw: Harness) -> None:
    async with gw.client("finance") as finance:
        arrears = await finance.get("/v1/reports/arrears", params={"sort": "-owed"})
        long = await finance.get("/v1/reports/arrears", params={"min_days": 1})
    owed = [(r["account_id"], r["owed"]) for r in arrears.json()["items"]]
    assert owed == [("L-R-E2-1", "20.00"), ("L-R-E1-1", "10.00")]
    assert long.json()["items"] == []  # both went below zero today


async def test_a_tenant_token_is_refused(gw: Harness) -> None:
    async with gw.client("tenant_a") as tenant:
        for path in ("/v1/reports/arrears", "/v1/reports/revenue", "/v1/rooms", "/v1/tenants", "/v1/payments"):
            response = await tenant.get(path)
            assert response.status_code == 403, (path, response.text)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/estates/NOPE", {}, 404, "not_found"),
        ("/v1/estates/NOPE/buildings", {}, 404, "not_found"),
        ("/v1/reports/revenue", {"estate_id": "NOPE"}, 404, "not_found"),
        ("/v1/rooms", {"floor": "ground"}, 422, "validation_error"),
        ("/v1/rooms", {"sort": "bogus"}, 422, "invalid_sort"),
        ("/v1/reports/arrears", {"min_days": "-3"}, 422, "validation_error"),
        ("/v1/reports/collection-rate", {"month": "2026-13"}, 422, "validation_error"),
        ("/v1/payments", {"start": "not-a-date"}, 422, "validation_error"),  # refused at the gateway's edge now
        ("/v1/payments", {"start": "2026-12-01", "end": "2026-11-01"}, 422, "invalid_range"),
    ],
)
async def test_billing_problems_pass_through(
    gw: Harness, path: str, params: dict[str, str], status: int, code: str
) -> None:
    async with gw.client("admin") as admin:
        response = await admin.get(path, params=params)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_openapi_names_the_sort_fields(gw: Harness) -> None:
    async with gw.client() as anonymous:
        doc = (await anonymous.get("/openapi.json")).json()
    assert "`-days_in_arrears`" not in doc["paths"]["/v1/reports/arrears"]["get"]["description"]
    assert "`days_in_arrears`" in doc["paths"]["/v1/reports/arrears"]["get"]["description"]
    assert "收缴率 = 实收 ÷ 应收" in doc["paths"]["/v1/reports/collection-rate"]["get"]["description"]
