"""Lease operations and acting staff through the gateway in front of the real billing service (its own
database): a lease is scoped by the estate of its room, and money routes that record who acted get
the signed-in staff member from the gateway, whatever the client wrote in the body."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_gateway.testing import PASSWORD, Harness, free_port, gateway_harness, serve

pytestmark = pytest.mark.integration
FORGED = "somebody-else"


async def _ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(pg_server_url: str, database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    name = f"shuidian_gw_settle_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    port = free_port()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(url),
        mqtt_url=mqtt_url,
        instance_id=f"billing-gw-settle-{port}",
        mqtt_clean_session=True,
        http_port=port,
    )
    try:
        async with (
            serve(billing_app(settings), port),
            gateway_harness(database_url, mqtt_url, billing_url=f"http://127.0.0.1:{port}") as h,
        ):
            async with h.client("admin") as admin:
                for estate in ("E1", "E2"):
                    room = f"R-{estate}"
                    await _ok(admin, "PUT", f"/v1/estates/{estate}", json={"name": f"小区{estate}"})
                    await _ok(admin, "PUT", f"/v1/buildings/{estate}-B", json={"estate_id": estate, "name": "1栋"})
                    await _ok(admin, "PUT", f"/v1/floors/{estate}-F", json={"building_id": f"{estate}-B", "level": 1})
                    body = {"floor_id": f"{estate}-F", "code": room, "area_m2": "50.00"}
                    await _ok(admin, "PUT", f"/v1/rooms/{room}", json=body)
                    await _ok(admin, "PUT", f"/v1/rooms/{room}/meters/M-{estate}", json={"utility": "electricity"})
                    await _ok(admin, "PUT", f"/v1/tenants/T-{estate}", json={"name": f"住户{estate}"})
                    lease = {"tenant_id": f"T-{estate}", "room_id": room, "move_in": "2018-01-01"}
                    await _ok(admin, "PUT", f"/v1/leases/L-{estate}", json=lease)
            yield h
    finally:
        await infra.drop_database(pg_server_url, name)


async def test_a_lease_is_scoped_by_the_estate_of_its_room(gw: Harness) -> None:
    async with gw.client("manager_e1") as manager:
        own = await manager.get("/v1/leases/L-E1")
        other = await manager.get("/v1/leases/L-E2")
        move_other = await manager.post("/v1/leases/L-E2/move-out", json={"move_out": "2018-03-01"})
        settle_other = await manager.post(
            "/v1/leases/L-E2/settlement",
            json={"move_out": "2018-03-01"},
            headers={"Idempotency-Key": "settle-other-0001"},
        )
        missing = await manager.get("/v1/leases/L-nowhere")
    assert own.status_code == 200, own.text
    assert (own.json()["estate_id"], own.json()["room_id"]) == ("E1", "R-E1")
    # Another estate's lease does not exist for this manager; settling (it refunds money) is finance's.
    assert [r.status_code for r in (other, move_other, missing)] == [404, 404, 404]
    assert settle_other.status_code == 403
    async with gw.client("admin") as admin:
        untouched = await _ok(admin, "GET", "/v1/leases/L-E2")
    assert untouched["move_out"] is None


async def test_finance_staff_of_one_estate_cannot_settle_another_estates_lease(gw: Harness) -> None:
    async with gw.client("bootstrap") as admin:
        body = {"username": gw.username("finance_e1"), "password": PASSWORD, "role": "finance", "estates": ["E1"]}
        assert (await admin.post("/v1/users", json=body)).status_code == 201
    token = (await gw.login("finance_e1")).json()["access_token"]
    async with gw.client(headers={"Authorization": f"Bearer {token}"}) as finance_e1:
        settle = await finance_e1.post(
            "/v1/leases/L-E2/settlement", json={"move_out": "2018-03-01"}, headers={"Idempotency-Key": "settle-e2-0001"}
        )
        read = await finance_e1.get("/v1/leases/L-E2/settlement")
    # Outside their estate the lease does not exist for them, and nothing was settled.
    assert (settle.status_code, read.status_code) == (404, 404), settle.text
    async with gw.client("admin") as admin:
        untouched = await admin.get("/v1/leases/L-E2/settlement")
    assert untouched.status_code == 404


async def test_settlement_records_the_signed_in_operator_not_the_body(gw: Harness) -> None:
    body = {"move_out": "2018-03-01", "closing_readings": [{"meter_id": "M-E1", "value": "0"}]}
    async with gw.client("finance") as finance:
        forged = await finance.post(  # no body field names who acts: one that tries is refused
            "/v1/leases/L-E1/settlement",
            json={**body, "operator": FORGED},
            headers={"Idempotency-Key": "settle-e1-0000"},
        )
        settled = await finance.post(
            "/v1/leases/L-E1/settlement", json=body, headers={"Idempotency-Key": "settle-e1-0001"}
        )
        again = await finance.post(
            "/v1/leases/L-E1/settlement", json=body, headers={"Idempotency-Key": "settle-e1-0001"}
        )
    async with gw.client("manager_e1") as manager:
        read = await manager.get("/v1/leases/L-E1/settlement")
    assert forged.status_code == 422, forged.text
    assert settled.status_code == 201, settled.text
    assert settled.json()["operator"] == f"user:{gw.user_ids['finance']}"
    assert again.json()["settlement_id"] == settled.json()["settlement_id"]
    assert read.json()["operator"] == settled.json()["operator"]
    assert read.json()["move_out"] == "2018-03-01"


async def test_a_cashier_cannot_open_a_shift_in_someone_elses_name(gw: Harness) -> None:
    async with gw.client("cashier") as cashier:
        forged = await cashier.post(
            "/v1/cash/shifts",
            json={"counter_id": "C1", "cashier": FORGED, "opening_float": "100.00"},
            headers={"Idempotency-Key": "shift-open-0000"},
        )
        shift = await cashier.post(
            "/v1/cash/shifts",
            json={"counter_id": "C1", "opening_float": "100.00"},
            headers={"Idempotency-Key": "shift-open-0001"},
        )
    assert forged.status_code == 422, forged.text
    assert shift.status_code == 201, shift.text
    assert shift.json()["cashier"] == f"user:{gw.user_ids['cashier']}"
