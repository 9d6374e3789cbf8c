"""The gateway in front of the REAL backends (collector, billing, control, alarm on real PostgreSQL and the real
broker): what estate-scoped staff and tenants do every day, along the backend routes that exist — not the fakes'."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiomqtt
import asyncpg
import httpx
import pytest
import pytest_asyncio

from shuidian_devstack.infra import free_port
from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import eventually
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel, MeterRef, Utility

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"


@dataclass
class Stack:
    platform: Platform
    database_url: str
    mqtt_url: str
    ids: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, name: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.AsyncClient(base_url=self.platform.urls["gateway"], headers=headers, timeout=10)


async def _ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response


async def _premises(admin: httpx.AsyncClient, ids: dict[str, str], dead_port: int) -> None:
    """Two estates, a room each; room 1 leased by T1 (moved out in June), then by T2; a meter in each room."""
    for e, room, code in (("E", "R1", "C1"), ("F", "R3", "C3")):
        estate, building, floor = ids[e], f"{ids[e]}.1", f"{ids[e]}.1.1"
        await _ok(await admin.put(f"/v1/estates/{estate}", json={"name": f"小区 {estate}"}))
        await _ok(await admin.put(f"/v1/buildings/{building}", json={"estate_id": estate, "name": "1 栋"}))
        await _ok(await admin.put(f"/v1/floors/{floor}", json={"building_id": building, "level": 1}))
        body = {"floor_id": floor, "code": ids[code], "area_m2": "50.00"}
        await _ok(await admin.put(f"/v1/rooms/{ids[room]}", json=body))
    for t, phone in (("T1", "13800000001"), ("T2", "13800000002"), ("T3", "13800000003")):
        await _ok(await admin.put(f"/v1/tenants/{ids[t]}", json={"name": f"租户 {t}", "phone": phone}))
    lease1 = {"tenant_id": ids["T1"], "room_id": ids["R1"], "move_in": "2026-01-01", "account_id": ids["A1"]}
    await _ok(await admin.put(f"/v1/leases/{ids['L1']}", json=lease1))
    await _ok(await admin.post(f"/v1/leases/{ids['L1']}/move-out", json={"move_out": "2026-06-01"}))
    lease2 = {"tenant_id": ids["T2"], "room_id": ids["R1"], "move_in": "2026-06-01", "account_id": ids["A2"]}
    await _ok(await admin.put(f"/v1/leases/{ids['L2']}", json=lease2))
    lease3 = {"tenant_id": ids["T3"], "room_id": ids["R3"], "move_in": "2026-06-01", "account_id": ids["A3"]}
    await _ok(await admin.put(f"/v1/leases/{ids['L3']}", json=lease3))
    await _ok(await admin.put(f"/v1/rooms/{ids['R1']}/meters/{ids['M1']}", json={"utility": "electricity"}))
    await _ok(await admin.put(f"/v1/rooms/{ids['R3']}/meters/{ids['M3']}", json={"utility": "electricity"}))
    # The collector's registry: a gateway nobody answers on (the meters stay offline; that is fine here).
    await _ok(await admin.put(f"/v1/gateways/{ids['GW']}", json={"name": "1号楼网关"}))
    bus = {"gateway_id": ids["GW"], "host": "127.0.0.1", "port": dead_port, "protocol": "dlt645"}
    await _ok(await admin.put(f"/v1/buses/{ids['BUS']}", json=bus))
    for n, m in (("01", "M1"), ("03", "M3")):
        meter = {"bus_id": ids["BUS"], "address": f"0000000001{n}", "model": "dds1588", "utility": "electricity"}
        await _ok(await admin.put(f"/v1/meters/{ids[m]}", json=meter))


ROSTER: dict[str, dict[str, Any]] = {
    "manager": {"role": "estate_manager", "estates": ["E"]},
    "maintenance": {"role": "maintenance", "estates": ["E"]},
    "admin": {"role": "system_admin", "estates": ["*"]},
    "tenant1": {"role": "tenant", "tenant_id": "T1"},
    "tenant2": {"role": "tenant", "tenant_id": "T2"},
}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(database_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    sfx = secrets.token_hex(3)
    names = ("E", "F", "R1", "R3", "C1", "C3", "T1", "T2", "T3", "L1", "L2", "L3", "A1", "A2", "A3", "M1", "M3")
    ids = {n: f"{n}-{sfx}" for n in names} | {"GW": f"GW-{sfx}", "BUS": f"GW-{sfx}-1"}
    overrides = {"gateway": {"login_attempts_per_minute": 10_000}}
    async with platform(database_url, mqtt_url, instance=f"stack-{sfx}", overrides=overrides) as p:
        stack = Stack(p, database_url, mqtt_url, ids)
        await _premises(p.staff, ids, free_port())
        for name, spec in ROSTER.items():
            body: dict[str, Any] = {"username": f"{name}-{sfx}", "password": PASSWORD, "role": spec["role"]}
            if "tenant_id" in spec:
                body["tenant_id"] = ids[spec["tenant_id"]]
            else:
                body["estates"] = [e if e == "*" else ids[e] for e in spec["estates"]]
            await _ok(await p.staff.post("/v1/users", json=body))
            token = await p.staff.post(
                "/v1/auth/token", data={"grant_type": "password", "username": body["username"], "password": PASSWORD}
            )
            stack.tokens[name] = (await _ok(token)).json()["access_token"]
        yield stack


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"stack-{uuid.uuid4().hex}"}


async def _command(client: httpx.AsyncClient, meter: str, kind: str) -> httpx.Response:
    return await client.post("/v1/commands", json={"meter_id": meter, "kind": kind, "reason": "测试"}, headers=_key())


async def test_an_estate_manager_works_their_meters_and_commands(stack: Stack) -> None:
    ids = stack.ids
    mine, theirs = ids["M1"], ids["M3"]
    async with stack.client("admin") as admin:
        await _ok(await _command(admin, theirs, "trip"))
    async with stack.client("manager") as manager:
        binding = await manager.get(f"/v1/meters/{mine}/binding")
        issued = await _command(manager, mine, "trip")
        other = await _command(manager, theirs, "trip")
        assert issued.status_code == 202, issued.text
        command_id = issued.json()["command_id"]
        listed = await manager.get("/v1/commands")
        one = await manager.get(f"/v1/commands/{command_id}")
        shadow = await manager.get(f"/v1/meters/{mine}/shadow")
        other_shadow = await manager.get(f"/v1/meters/{theirs}/shadow")
        devices = await manager.get("/v1/meters")
        record = await manager.get(f"/v1/meters/{mine}")
        work_orders = await manager.get("/v1/work-orders")
    assert binding.status_code == 200, binding.text
    assert binding.json()["estate_id"] == ids["E"], binding.text
    assert other.status_code == 403, other.text
    assert listed.status_code == 200, listed.text
    assert {c["meter_id"] for c in listed.json()["items"]} == {mine}  # the other estate's command is not listed
    assert one.status_code == 200, one.text
    assert shadow.status_code == 200, shadow.text
    assert other_shadow.status_code == 404
    assert devices.status_code == 200, devices.text
    assert {d["meter_id"] for d in devices.json()["items"]} <= {mine}
    assert record.status_code == 200, record.text
    assert record.json()["bus_id"] == ids["BUS"], record.text
    assert work_orders.status_code == 200, work_orders.text


async def test_estate_maintenance_reads_state_and_closes_valves_in_their_estate(stack: Stack) -> None:
    ids = stack.ids
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "INSERT INTO collector.device_state (meter_id, online, relay) VALUES ($1, true, 'closed'), "
            "($2, true, 'closed') ON CONFLICT (meter_id) DO NOTHING",
            ids["M1"],
            ids["M3"],
        )
    finally:
        await conn.close()
    async with stack.client("maintenance") as maintenance:
        state = await maintenance.get(f"/v1/meters/{ids['M1']}/state")
        other_state = await maintenance.get(f"/v1/meters/{ids['M3']}/state")
        closed = await _command(maintenance, ids["M1"], "direct_close")
        tripped = await _command(maintenance, ids["M1"], "trip")  # maintenance may not cut supply
    assert state.status_code == 200, state.text
    assert state.json()["meter_id"] == ids["M1"], state.text
    assert other_state.status_code == 404
    assert closed.status_code == 202, closed.text
    assert tripped.status_code == 403


async def test_keep_power_is_listed_per_estate(stack: Stack) -> None:
    ids = stack.ids
    async with stack.client("admin") as admin:
        for account in (ids["A2"], ids["A3"]):
            await _ok(await admin.put(f"/v1/keep-power/households/{account}", json={"reason": "medical"}))
    async with stack.client("manager") as manager:
        listed = await manager.get("/v1/keep-power")
        mine = await manager.get(f"/v1/keep-power/households/{ids['A2']}")
        theirs = await manager.get(f"/v1/keep-power/households/{ids['A3']}")
    assert listed.status_code == 200, listed.text
    assert {k["subject"] for k in listed.json()["items"]} == {ids["A2"]}
    assert mine.status_code == 200
    assert mine.json()["reason"] == "medical"
    assert theirs.status_code == 404


async def _publish(mqtt_url: str, topic: str, payload: bytes) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        await client.publish(topic, payload, qos=1)


async def test_an_account_alarm_lands_in_the_estate_of_the_lease(stack: Stack) -> None:
    ids = stack.ids
    account = ids["A2"]
    event = BalanceEvent(
        source="stack-test",
        account_id=account,
        kind=BalanceEventKind.EXHAUSTED,
        level=BalanceLevel.EXHAUSTED,
        balance=Decimal("-1.00"),
        sequence=10_000,
        meters=(MeterRef(meter_id=ids["M1"], utility=Utility.ELECTRICITY),),
    )
    await _publish(stack.mqtt_url, topics.balance(account), event.model_dump_json().encode())
    async with stack.client("manager") as manager:

        async def listed() -> list[dict[str, Any]] | None:
            found = await manager.get("/v1/alarms", params={"source_id": account})
            assert found.status_code == 200, found.text
            return [a for a in found.json()["items"] if a["alarm_type"] == "balance_exhausted"] or None

        (alarm,) = await eventually(listed, "the exhausted-balance alarm, in the manager's estate")
        one = await manager.get(f"/v1/alarms/{alarm['alarm_id']}")
        acknowledged = await manager.post(f"/v1/alarms/{alarm['alarm_id']}/acknowledge", json={"by": "manager"})
    assert alarm["estate"] == ids["E"]
    assert one.status_code == 200, one.text
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["state"] == "acknowledged", acknowledged.text


async def test_mean_time_to_repair_is_a_listing(stack: Stack) -> None:
    async with stack.client("admin") as admin:
        mttr = await admin.get("/v1/work-orders/mttr")
    async with stack.client("manager") as manager:
        scoped = await manager.get("/v1/work-orders/mttr")
    assert mttr.status_code == 200, mttr.text
    assert isinstance(mttr.json()["items"], list)
    assert scoped.status_code == 200, scoped.text
    assert all(row["estate"] == stack.ids["E"] for row in scoped.json()["items"])


async def _if_match(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[int, int]:
    """PUT with a stale ETag, then with the current one: (status of the stale, status of the current)."""
    read = await client.get(path)
    assert read.status_code == 200, f"GET {path}: {read.text}"
    etag = read.headers["etag"]
    stale = await client.put(path, json=body, headers={"If-Match": 'W/"0000"'})
    fresh = await client.put(path, json=body, headers={"If-Match": etag})
    return stale.status_code, fresh.status_code


async def test_if_match_works_on_every_put_that_documents_it(stack: Stack) -> None:
    ids = stack.ids
    estate = ids["E"]
    puts: dict[str, dict[str, Any]] = {
        f"/v1/keep-power/households/{ids['A2']}": {"reason": "elderly"},
        f"/v1/buildings/{estate}.1": {"estate_id": estate, "name": "1 栋（东）"},
        f"/v1/floors/{estate}.1.1": {"building_id": f"{estate}.1", "level": 1},
        f"/v1/buses/{ids['BUS']}": {"gateway_id": ids["GW"], "host": "127.0.0.1", "port": 9, "protocol": "dlt645"},
        f"/v1/gateways/{ids['GW']}": {"name": "东区网关"},
        f"/v1/meters/{ids['M1']}": {
            "bus_id": ids["BUS"],
            "address": "000000000101",
            "model": "dds1588",
            "utility": "electricity",
        },
        f"/v1/rooms/{ids['R1']}/meters/{ids['M1']}": {"utility": "electricity"},
        "/v1/tariffs/water": {"unit_price": "3.10", "effective_from": "2099-01-01T00:00:00+08:00"},
        f"/v1/tenants/{ids['T2']}": {"name": "租户 T2", "phone": "13800000002"},
        f"/v1/rooms/{ids['R1']}": {"floor_id": f"{estate}.1.1", "code": ids["C1"], "area_m2": "50.00"},
    }
    async with stack.client("admin") as admin:
        await _ok(
            await admin.put(f"/v1/meters/X{ids['M1']}/binding", json={"account_id": ids["A1"], "utility": "water"})
        )
        puts[f"/v1/meters/X{ids['M1']}/binding"] = {"account_id": ids["A1"], "utility": "water"}
        results = {path: await _if_match(admin, path, body) for path, body in puts.items()}
        missing = await admin.put(
            f"/v1/buildings/{estate}.nowhere", json={"estate_id": estate, "name": "x"}, headers={"If-Match": 'W/"1"'}
        )
    assert {p: r for p, r in results.items() if r[0] != 412 or r[1] >= 300} == {}
    assert missing.status_code == 412


async def test_tenants_see_their_own_leases_and_keep_their_final_statements(stack: Stack) -> None:
    ids = stack.ids
    async with stack.client("tenant2") as tenant2:
        room = await tenant2.get(f"/v1/me/rooms/{ids['R1']}")
        settings = await tenant2.put(
            "/v1/me/notification-settings", json={"channels": ["app", "sms"], "low_balance": True}
        )
    async with stack.client("tenant1") as tenant1:
        final = await tenant1.get(f"/v1/me/accounts/{ids['A1']}/statements/2026-05")
        after = await tenant1.get(f"/v1/me/accounts/{ids['A1']}/statements/2026-07")
        successor = await tenant1.get(f"/v1/me/accounts/{ids['A2']}/statements/2026-07")
    assert room.status_code == 200, room.text
    assert [lease["tenant_id"] for lease in room.json()["leases"]] == [ids["T2"]]
    assert settings.status_code == 200, settings.text
    assert settings.json()["channels"] == ["app", "sms"]
    assert final.status_code == 200, final.text
    assert after.status_code == 404
    assert successor.status_code == 404


async def test_a_tenant_sees_the_last_reading_of_their_meter(stack: Stack) -> None:
    ids = stack.ids
    conn = await asyncpg.connect(stack.database_url)
    try:  # billing's register watermark, as a priced reading leaves it
        await conn.execute(
            "INSERT INTO billing.watermarks (meter_id, register, value, sampled_at) "
            "VALUES ($1, 'energy_active_import_total', 1234.56, now())",
            ids["M1"],
        )
    finally:
        await conn.close()
    async with stack.client("tenant2") as tenant2:
        meter = await tenant2.get(f"/v1/me/meters/{ids['M1']}")
    assert meter.status_code == 200, meter.text
    reading = meter.json()["last_reading"]
    assert reading is not None
    assert Decimal(reading["registers"]["energy_active_import_total"]) == Decimal("1234.56")


async def test_the_device_online_rate_counts_the_meters_of_the_managers_estate(stack: Stack) -> None:
    async with stack.client("manager") as manager:
        scoped = await manager.get("/v1/reports/device-online-rate", params={"gateway_id": stack.ids["GW"]})
    async with stack.client("admin") as admin:
        everything = await admin.get("/v1/reports/device-online-rate", params={"gateway_id": stack.ids["GW"]})
    assert scoped.status_code == 200, scoped.text
    assert everything.status_code == 200, everything.text
    assert scoped.json()["total"]["meters"] == 1  # M1; M3 on the same gateway is in the other estate
    assert everything.json()["total"]["meters"] == 2
    assert [g["gateway_id"] for g in scoped.json()["gateways"]] == [stack.ids["GW"]]
