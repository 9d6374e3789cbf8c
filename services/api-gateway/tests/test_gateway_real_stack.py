"""The gateway in front of the REAL backends (collector, billing, control, alarm on real PostgreSQL and the real
broker): what estate-scoped staff and tenants do every day, along the backend routes that exist — not the fakes'."""

from __future__ import annotations

import re
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
from pydantic import SecretStr

from shuidian_devstack.infra import free_port
from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import eventually
from shuidian_gateway.api.routes_staff import ROUTES, Route
from shuidian_gateway.app import create_app as gateway_app
from shuidian_gateway.domain.policy import POLICY, Role
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import JWT_SECRET, STAFF_KEY
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel

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
    await _ok(await admin.put(f"/v1/accounts/{ids['A4']}", json={"name": "公共水表", "estate_id": ids["E"]}))
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
    "cashier": {"role": "cashier", "estates": ["*"]},
    "finance": {"role": "finance", "estates": ["*"]},
    "tenant1": {"role": "tenant", "tenant_id": "T1"},
    "tenant2": {"role": "tenant", "tenant_id": "T2"},
}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(database_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    sfx = secrets.token_hex(3)
    names = ("E", "F", "R1", "R3", "C1", "C3", "T1", "T2", "T3", "L1", "L2", "L3", "A1", "A2", "A3", "A4", "M1", "M3")
    ids = {n: f"{n}-{sfx}" for n in names} | {"GW": f"GW-{sfx}", "BUS": f"GW-{sfx}-1"}
    overrides: dict[str, dict[str, Any]] = {
        "gateway": {"login_attempts_per_minute": 10_000},
        # No protected windows: the suite runs at night, at weekends and on holidays too (windows have their own tests).
        "control": {"nights_start": None, "nights_end": None, "protect_weekends": False, "protect_holidays": False},
    }
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


async def _announce(stack: Stack, account: str, level: BalanceLevel, balance: str, sequence: int) -> None:
    """A balance event as billing publishes it. Alarm takes balances through a shared subscription, so on a broker
    other alarm instances share too (other test runs) an event may go to one of them: a probe announces again,
    with a higher sequence, until this stack's alarm has it."""
    event = BalanceEvent(
        source="stack-test",
        account_id=account,
        kind=BalanceEventKind(level.value),
        level=level,
        balance=Decimal(balance),
        sequence=sequence,
        meters=(),
    )
    await _publish(stack.mqtt_url, topics.balance(account), event.model_dump_json().encode())


async def test_an_account_alarm_lands_in_the_estate_of_the_lease(stack: Stack) -> None:
    ids = stack.ids
    account = ids["A2"]
    sequences = iter(range(10_000, 20_000))
    async with stack.client("manager") as manager:

        async def listed() -> list[dict[str, Any]] | None:
            await _announce(stack, account, BalanceLevel.EXHAUSTED, "-1.00", next(sequences))
            found = await manager.get("/v1/alarms", params={"source_id": account})
            assert found.status_code == 200, found.text
            return [a for a in found.json()["items"] if a["alarm_type"] == "balance_exhausted"] or None

        (alarm,) = await eventually(listed, "the exhausted-balance alarm, in the manager's estate", interval=0.5)
        one = await manager.get(f"/v1/alarms/{alarm['alarm_id']}")
        acknowledged = await manager.post(f"/v1/alarms/{alarm['alarm_id']}/acknowledge", json={})
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
            await admin.put(f"/v1/meters/X{ids['M1']}/binding", json={"account_id": ids["A4"], "utility": "water"})
        )
        puts[f"/v1/meters/X{ids['M1']}/binding"] = {"account_id": ids["A4"], "utility": "water"}
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
        after = await tenant1.get(f"/v1/me/accounts/{ids['A1']}/statements/2026-06")  # moved out on 1 June
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
            "VALUES ($1, 'energy_active_import_total', 1234.56, now()) "
            "ON CONFLICT (meter_id, register) DO UPDATE SET value = EXCLUDED.value",
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


# -- every row of the gateway's route table, against the real services, for every role it allows ------------------

STAFF = {
    "admin": Role.SYSTEM_ADMIN,
    "manager": Role.ESTATE_MANAGER,  # estate E only
    "maintenance": Role.MAINTENANCE,  # estate E only
    "cashier": Role.CASHIER,
    "finance": Role.FINANCE,
}
ESTATE_SCOPED = frozenset({"manager", "maintenance"})
TENANT = ("tenant2",)
REPORTS = ("admin", "manager", "finance")  # reports:read
CSV_ROOMS = (
    "building,floor,room,code,area_m2,household_size,electricity_meter,water_meter,tenant_id,tenant_name,phone,move_in\n"
    "{E}.9,1,R9-{E},C9-{E},40.00,1,,,,,,\n"
)
CSV_DEVICES = (
    "gateway_id,bus_id,host,port,protocol,meter_id,address,model,utility\n"
    "GX-{E},GX-{E}-1,127.0.0.1,9,dlt645,MX9-{E},000000000999,dds1588,electricity\n"
)


@dataclass(frozen=True)
class Case:
    """One row of the gateway's route table as a request: `{name}` in the path, body and query are the stack's
    ids. `roles`: who may call it (default: the roles the route's action allows, estate-scoped ones only where the
    route is scoped by estate); `once`: a write that only its first allowed role runs; `ok`: the statuses that
    count as done."""

    method: str
    path: str
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    ok: frozenset[int] = frozenset({200})
    roles: tuple[str, ...] | None = None
    refused: str | None = None  # default: a staff role the action is not granted to, else a tenant
    once: bool = False
    csv: str | None = None


def _c(method: str, path: str, body: Any = None, *ok: int, **kw: Any) -> Case:
    return Case(method, path, body, ok=frozenset(ok or {200}), **kw)


CASES: tuple[Case, ...] = (
    # premises
    _c("GET", "/v1/estates"),
    _c("GET", "/v1/estates/{E}"),
    _c("PUT", "/v1/estates/{E}", {"name": "小区 {E}"}, 204),
    _c("POST", "/v1/estates/{E}/import", None, 200, once=True, csv=CSV_ROOMS),
    _c("GET", "/v1/estates/{E}/buildings"),
    _c("GET", "/v1/buildings/{E}.1"),
    _c("PUT", "/v1/buildings/{E}.1", {"estate_id": "{E}", "name": "1 栋"}, 204),
    _c("GET", "/v1/floors/{E}.1.1"),
    _c("PUT", "/v1/floors/{E}.1.1", {"building_id": "{E}.1", "level": 1}, 204),
    _c("GET", "/v1/rooms"),
    _c("GET", "/v1/rooms/{R1}"),
    _c("PUT", "/v1/rooms/{R1}", {"floor_id": "{E}.1.1", "code": "{C1}", "area_m2": "50.00"}, 204),
    _c("GET", "/v1/rooms/{R1}/meters/{M1}"),
    _c("PUT", "/v1/rooms/{R1}/meters/{M1}", {"utility": "electricity"}, 204),
    _c("GET", "/v1/tenants"),
    _c("GET", "/v1/tenants/{T2}"),
    _c("PUT", "/v1/tenants/{T2}", {"name": "租户 T2", "phone": "13800000002"}, 204),
    _c("GET", "/v1/tenants/{T2}/scope"),
    _c(
        "PUT",
        "/v1/leases/{L2}",
        {"tenant_id": "{T2}", "room_id": "{R1}", "move_in": "2026-06-01", "account_id": "{A2}"},
    ),
    _c("GET", "/v1/leases/{L2}"),
    _c("POST", "/v1/leases/{L1}/move-out", {"move_out": "2026-06-01"}),
    _c(
        "POST",
        "/v1/leases/{L1}/settlement",
        {"reason": "退租", "move_out": "2026-06-01"},
        200,
        201,
        once=True,
    ),
    _c("GET", "/v1/leases/{L1}/settlement"),
    # accounts, payments, tariffs
    _c("GET", "/v1/accounts/{A2}"),
    _c("PUT", "/v1/accounts/{A2}", {"name": "{C1}"}, 204),
    _c("GET", "/v1/accounts/{A2}/ledger"),
    _c("GET", "/v1/accounts/{A2}/usage"),
    _c("POST", "/v1/accounts/{A2}/topups", {"amount": "10.00"}, 201),
    _c("POST", "/v1/accounts/{A2}/subsidies", {"amount": "5.00", "program": "低保补贴"}, 201),
    _c("POST", "/v1/ledger/transactions/{subsidy_txn}/reversal", {"reason": "录错"}, 201, once=True),
    _c("GET", "/v1/ledger/transactions/{txn}/explain"),
    _c("GET", "/v1/corrections"),
    _c("GET", "/v1/held-readings"),
    _c("GET", "/v1/unknown-meters"),
    _c("GET", "/v1/payments"),
    _c("GET", "/v1/payments/orders/{order}"),
    _c("POST", "/v1/payments/{payment}/refunds", {"amount": "1.00", "reason": "多缴"}, 201, once=True),
    _c("GET", "/v1/payments/reviews"),
    _c("POST", "/v1/cash/shifts", {"counter_id": "K-{E}", "opening_float": "100.00"}, 201, once=True),
    _c("GET", "/v1/cash/shifts/{shift}"),
    _c("POST", "/v1/cash/shifts/{shift}/payments", {"account_id": "{A2}", "amount": "5.00"}, 201, once=True),
    _c("POST", "/v1/cash/shifts/{shift}/close", {"counted_cash": "105.00"}, 200, 201, once=True),
    _c("GET", "/v1/tariffs/water"),
    _c("PUT", "/v1/tariffs/water", {"unit_price": "3.10", "effective_from": "2099-01-01T00:00:00+08:00"}, 204),
    _c("GET", "/v1/tariffs/water/versions"),
    _c(
        "POST",
        "/v1/tariffs/water/versions",
        {
            "effective_from": "2098-01-01T00:00:00+08:00",
            "components": [{"kind": "flat", "name": "水费", "unit_price": "3.00"}],
        },
        200,
        201,
        once=True,
    ),
    _c("GET", "/v1/meters/X{M1}/binding"),
    _c("PUT", "/v1/meters/X{M1}/binding", {"account_id": "{A4}", "utility": "water"}, 204),
    # devices
    _c("GET", "/v1/meters"),
    _c("GET", "/v1/meters/{M1}/state"),
    _c("GET", "/v1/gateways/{GW}/status"),
    _c("GET", "/v1/gateways/{GW}"),
    _c("PUT", "/v1/gateways/{GW}", {"name": "1号楼网关"}, 204),
    _c("GET", "/v1/buses/{BUS}"),
    _c("PUT", "/v1/buses/{BUS}", {"gateway_id": "{GW}", "host": "127.0.0.1", "port": 9, "protocol": "dlt645"}, 204),
    _c("GET", "/v1/meters/{M1}"),
    _c(
        "PUT",
        "/v1/meters/{M1}",
        {"bus_id": "{BUS}", "address": "000000000101", "model": "dds1588", "utility": "electricity"},
        204,
    ),
    _c("POST", "/v1/commissioning", None, 200, once=True, csv=CSV_DEVICES),
    # commands
    _c("GET", "/v1/commands"),
    _c(
        "POST",
        "/v1/commands",
        {"meter_id": "{M1}", "kind": "time_sync", "reason": "校时"},
        202,
        roles=("admin", "manager", "maintenance"),
        refused="cashier",
    ),
    _c("GET", "/v1/commands/{command}"),
    _c("POST", "/v1/commands/{command}/cancel", {"reason": "已缴费"}, 200, once=True),
    _c("GET", "/v1/meters/{M1}/shadow"),
    _c("GET", "/v1/schedules"),
    _c("GET", "/v1/keep-power"),
    _c("PUT", "/v1/keep-power/households/{A2}", {"reason": "medical"}, 204),
    _c("GET", "/v1/keep-power/households/{A2}"),
    _c("GET", "/v1/estates/{E}/policy"),
    _c("PUT", "/v1/estates/{E}/policy", {"weekends": True, "holidays": True}, 204),
    _c(
        "POST",
        "/v1/commands/batch",
        {"meters": ["{M1}"], "kind": "time_sync", "reason": "校时"},
        202,
        roles=("admin", "manager", "maintenance"),
        refused="cashier",
    ),
    _c(
        "POST",
        "/v1/commands/scheduled",
        {"name": "每日校时", "kind": "time_sync", "at_local": "02:00:00", "meters": ["{M1}"]},
        201,
        roles=("admin", "manager", "maintenance"),
        refused="cashier",
    ),
    # alarms and work orders
    _c("GET", "/v1/alarms"),
    _c("GET", "/v1/alarms/{alarm}"),
    _c("POST", "/v1/alarms/{alarm}/acknowledge", {}, 200, once=True),
    _c("GET", "/v1/alarms/{alarm}/actions"),
    _c("POST", "/v1/alarms/{alarm}/resolve", {"reason": "已上门处理 · handled on site"}, 200, once=True),
    _c("GET", "/v1/faults"),
    _c("GET", "/v1/work-orders"),
    _c("GET", "/v1/work-orders/mttr"),
    _c("GET", "/v1/work-orders/{work_order}"),
    _c("PATCH", "/v1/work-orders/{work_order}", {"note": "已到现场"}),
    _c(
        "POST",
        "/v1/work-orders",
        {"device_id": "{M1}", "fault_type": "tenant_report", "estate": "{E}", "description": "显示屏不亮"},
        201,
        roles=("admin", "manager", "maintenance"),
        refused="cashier",
    ),
    # reports
    _c("GET", "/v1/reports/arrears"),
    _c("GET", "/v1/reports/revenue"),
    _c("GET", "/v1/reports/consumption"),
    _c("GET", "/v1/reports/collection-rate", params={"month": "2026-11"}),
    _c("GET", "/v1/reports/device-online-rate", roles=("admin", "manager", "finance"), refused="cashier"),
    # operations (routes_operations.py): roles written out; estate-scoped roles only where the route is scoped
    _c("GET", "/v1/estates/{E}/meters", roles=("admin", "manager", "maintenance", "cashier", "finance")),
    _c("GET", "/v1/tenants/{T2}/leases", roles=("admin", "cashier", "finance"), refused="manager"),
    _c("GET", "/v1/meters/{M1}/usage", roles=("admin", "manager", "cashier", "finance"), refused="maintenance"),
    _c("GET", "/v1/meters/{M1}/reading", roles=("admin", "manager", "cashier", "finance"), refused="maintenance"),
    _c(
        "GET",
        "/v1/accounts/{A2}/statements/2026-11",
        params={"format": "csv"},
        roles=("admin", "manager", "cashier", "finance"),
        refused="maintenance",
    ),
    _c(
        "PUT",
        "/v1/estates/{E}/common-meters/C{M1}",
        {"utility": "electricity"},
        204,
        roles=("admin", "manager"),
        refused="finance",
    ),
    _c("POST", "/v1/estates/{E}/months/2026-11/run", None, roles=("admin", "manager", "finance"), refused="cashier"),
    # X{M1} is bound but has no reading yet: billing's own 409 shows the event reached it (a full event:
    # test_gateway_operations.py)
    _c(
        "POST",
        "/v1/meters/X{M1}/events",
        {"kind": "rollover", "at": "2026-11-20T10:00:00+08:00", "reason": "走字翻转", "register_after": "5"},
        409,
        roles=("admin", "finance"),
        refused="manager",
    ),
    _c(
        "POST",
        "/v1/payments/bank/imports",
        None,
        201,
        once=True,
        roles=("admin", "finance"),
        refused="manager",
        csv="交易日期,交易流水号,付款人,金额,附言\n2026-11-20,T-{E},张三,1.00,缴水电费 {A2}\n",
    ),
    _c(
        "PUT",
        "/v1/payments/aliases/AL-{E}",
        {"account_id": "{A2}", "kind": "reference"},
        204,
        roles=("admin", "finance"),
        refused="cashier",
    ),
    _c("GET", "/v1/payments/callbacks", roles=("admin", "cashier", "finance"), refused="manager"),
    _c("GET", "/v1/payments/reconciliations", params={"bill_date": "2026-11-20"}, roles=("admin", "finance")),
    _c("POST", "/v1/payments/reconciliations/sandbox/2026-11-20", None, 200, roles=("admin", "finance")),
    _c("GET", "/v1/payments/{payment}/refunds", roles=("admin", "cashier", "finance"), refused="manager"),
    _c("GET", "/v1/holds", roles=("admin", "manager", "maintenance", "cashier", "finance")),
    _c("PUT", "/v1/holds/{E}", {"reason": "测试停断开关"}, 204, roles=("admin", "manager"), refused="maintenance"),
    _c(
        "DELETE",
        "/v1/holds/{E}",
        None,
        204,
        params={"reason": "测试结束"},
        once=True,
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c("GET", "/v1/deferrals", roles=("admin", "manager", "maintenance", "cashier", "finance")),
    _c(
        "DELETE",
        "/v1/keep-power/households/{A2}",
        None,
        204,
        params={"reason": "已康复"},
        once=True,
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c(
        "PUT", "/v1/keep-power/estates/{E}", {"reason": "other"}, 204, roles=("admin", "manager"), refused="maintenance"
    ),
    _c(
        "DELETE",
        "/v1/keep-power/estates/{E}",
        None,
        204,
        params={"reason": "天气转凉"},
        once=True,
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c("GET", "/v1/policy-log", roles=("admin",), refused="manager"),
    _c("GET", "/v1/calendar", roles=("admin", "manager", "maintenance", "cashier", "finance")),
    _c(
        "PUT",
        "/v1/calendar/2097",
        {"holidays": ["2097-01-01"], "notice": "测试用安排"},
        roles=("admin",),
        refused="manager",
    ),
    _c("GET", "/v1/calendar/2097", roles=("admin", "manager", "maintenance", "cashier", "finance")),
    _c("GET", "/v1/alarm-rules", roles=("admin", "manager", "maintenance"), refused="cashier"),
    _c(
        "GET",
        "/v1/alarm-rules/effective",
        params={"meter_id": "{M1}"},
        roles=("admin", "manager", "maintenance"),
        refused="cashier",
    ),
    _c(
        "PUT",
        "/v1/alarm-rules",
        {
            "scope_level": "estate",
            "scope_key": "{E}",
            "slot": "over_voltage",
            "rule": {"kind": "threshold", "measure": "over_voltage", "limit": "245.5"},
        },
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c(
        "DELETE",
        "/v1/alarm-rules",
        None,
        204,
        params={"scope_level": "estate", "scope_key": "{E}", "slot": "over_voltage"},
        once=True,
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c(
        "POST",
        "/v1/alarm-subscriptions",
        {"audience": "staff", "role": "maintenance", "estate": "{E}", "channel": "email", "address": "ops@example.com"},
        201,
        roles=("admin", "manager"),
        refused="maintenance",
    ),
    _c("GET", "/v1/alarm-subscriptions", roles=("admin", "manager", "maintenance"), refused="cashier"),
    _c("GET", "/v1/audit-log", roles=("admin",), refused="manager"),
    _c(
        "POST",
        "/v1/commands/batch/preview",
        {"meters": ["{M1}"], "kind": "trip", "reason": "预览"},
        roles=("admin", "manager", "maintenance", "cashier", "finance"),
    ),
    _c("GET", "/v1/commissioning", roles=("admin",), refused="manager"),
    # the devices the commissioning row above registered, removed again (unbound: all-estates principals only)
    _c("DELETE", "/v1/meters/MX9-{E}", None, 204, once=True, roles=("admin",), refused="cashier"),
    _c("DELETE", "/v1/buses/GX-{E}-1", None, 204, once=True, roles=("admin",), refused="manager"),
    _c("DELETE", "/v1/gateways/GX-{E}", None, 204, once=True, roles=("admin",), refused="manager"),
    _c("GET", "/v1/notifications", roles=("admin",), refused="manager"),
    # tenants (a staff token is refused)
    _c("GET", "/v1/me", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/rooms", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/rooms/{R1}", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/meters", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/meters/{M1}", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/usage", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/usage/today", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/statements/2026-11", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/transactions/{txn}/explain", roles=TENANT, refused="admin"),
    _c("POST", "/v1/me/accounts/{A2}/topups", {"amount": "20.00"}, 201, roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/payments/{order}", roles=TENANT, refused="admin"),
    _c("POST", "/v1/me/payments/{order}/sandbox-pay", None, 200, roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/payments", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/payment-methods", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/alarms", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/alarms/{alarm}", roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/notification-settings", roles=TENANT, refused="admin"),
    _c("PUT", "/v1/me/notification-settings", {"channels": ["app"]}, roles=TENANT, refused="admin"),
    _c("POST", "/v1/me/live/tickets", None, 200, 201, roles=TENANT, refused="admin"),
    _c("GET", "/v1/me/accounts/{A2}/insights", roles=TENANT, refused="admin"),
    # insights: reports for estate staff within their estates; line-loss groups span feeders (all estates)
    *(
        _c("GET", f"/v1/insights/{path}/readings", params={"start": "2026-11-01T00:00:00+08:00"}, roles=REPORTS)
        for path in ("meters/{M1}", "rooms/{R1}")
    ),
    # Insights learns a building's meters from billing's occupancy messages: until they arrive its own 404
    # ("no meters known there") still shows the gateway let the role through to it.
    _c(
        "GET",
        "/v1/insights/buildings/{E}.1/readings",
        None,
        200,
        404,
        params={"start": "2026-11-01T00:00:00+08:00"},
        roles=REPORTS,
    ),
    # The sweep's estate has too little history for these two: insights' own refusal (422 no hourly tariff,
    # 404 fewer than two households) shows the request passed the gateway and reached it.
    _c(
        "POST",
        "/v1/insights/what-if",
        {"utility": "electricity", "months": 1, "proposed": {"flat_price": "0.60"}, "estate_id": "{E}"},
        200,
        422,
        roles=REPORTS,
    ),
    _c("GET", "/v1/insights/habits", None, 200, 404, params={"month": "2026-11", "estate_id": "{E}"}, roles=REPORTS),
    _c("GET", "/v1/insights/trends", params={"estate_id": "{E}"}, roles=REPORTS),
    _c(
        "PUT",
        "/v1/insights/line-loss/groups/LL-{E}",
        {"master_meter_id": "{M1}", "sub_meter_ids": ["X{M1}"], "estate_id": "{E}"},
        204,
        roles=("admin", "manager"),
        refused="finance",
    ),
    _c(
        "GET",
        "/v1/insights/line-loss/groups/LL-{E}/days",
        params={"start": "2026-11-01", "end": "2026-11-02"},
        roles=("admin", "finance"),
        refused="manager",
    ),
)
# Rows that reach no backend, or not as a plain request, and where they are tested instead.
EXEMPT: dict[tuple[str, str], str] = {
    **{
        ("GET", p): "the service's own surface (operations)"
        for p in ("/asyncapi.json", "/healthz", "/readyz", "/metrics", "/v1/dead-letters")
    },
    ("POST", "/v1/dead-letters/{letter_id}/replay"): "the service's own surface (operations)",
    ("GET", "/v1/me/live"): "a WebSocket / event stream: test_gateway_live_*.py",
    ("GET", "/v1/live"): "the staff event stream: test_gateway_live_staff.py",
    **dict.fromkeys(
        (
            ("GET", "/v1/tariff-plans"),
            ("GET", "/v1/tariff-plans/{plan_id}"),
            ("PUT", "/v1/tariff-plans/{plan_id}"),
            ("GET", "/v1/tariff-plans/{plan_id}/versions/{utility}"),
            ("POST", "/v1/tariff-plans/{plan_id}/versions/{utility}"),
            ("PUT", "/v1/rooms/{room_id}/customer-class"),
            ("PUT", "/v1/leases/{lease_id}/customer-class"),
            ("PUT", "/v1/meters/{meter_id}/customer-class"),
            ("GET", "/v1/price-corrections"),
            ("GET", "/v1/price-corrections/{run_id}"),
            ("POST", "/v1/price-corrections/{run_id}"),
            ("POST", "/v1/price-corrections/{run_id}/preview"),
        ),
        "tariff plans, classes and price corrections against the real backends, per role and estate: "
        "test_gateway_tariff_plans.py",
    ),
    ("POST", "/v1/payments/notify/{provider}"): "signed provider callbacks: billing's payment tests",
    **dict.fromkeys(
        (
            ("POST", "/v1/auth/token"),
            ("POST", "/v1/auth/revoke"),
            ("GET", "/v1/auth/me"),
            ("POST", "/v1/users"),
            ("GET", "/v1/users"),
            ("GET", "/v1/users/{user_id}"),
            ("PATCH", "/v1/users/{user_id}"),
            ("POST", "/v1/api-keys"),
            ("GET", "/v1/api-keys"),
            ("DELETE", "/v1/api-keys/{key_id}"),
        ),
        "the gateway's own users, keys and tokens, no backend: test_gateway_identity.py",
    ),
    **dict.fromkeys(
        (
            ("POST", "/v1/webhooks"),
            ("GET", "/v1/webhooks"),
            ("GET", "/v1/webhooks/{webhook_id}"),
            ("PATCH", "/v1/webhooks/{webhook_id}"),
            ("DELETE", "/v1/webhooks/{webhook_id}"),
        ),
        "the gateway's own webhook subscriptions, no backend: test_gateway_webhooks_once.py",
    ),
    **dict.fromkeys(
        (
            ("POST", "/v1/payments/reviews/{review_id}/assign"),
            ("POST", "/v1/payments/reviews/{review_id}/dismiss"),
            ("DELETE", "/v1/alarm-subscriptions/{subscription_id}"),
            ("DELETE", "/v1/schedules/{schedule_id}"),
            ("POST", "/v1/notifications/{notification_id}/retry"),
        ),
        "acts on an item an earlier request makes (a bank line, a subscription, a schedule, a dead notification): "
        "test_gateway_operations.py",
    ),
}


def _matches(template: str, path: str) -> bool:
    """Whether a case's path (its ids still `{named}`) is a request to the route `template`."""
    pattern = "".join(
        "[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", template)
    )
    return re.fullmatch(pattern, path) is not None


def gateway_operations() -> set[tuple[str, str]]:
    """The gateway's route table: every operation of its OpenAPI (routers included)."""
    app = gateway_app(
        GatewaySettings(
            environment="test",
            database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
            mqtt_url="mqtt://127.0.0.1:1",
            staff_api_key=SecretStr(STAFF_KEY),
            jwt_secret=SecretStr(JWT_SECRET),
        )
    )
    return {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}


def test_every_gateway_route_has_a_real_stack_case() -> None:
    """A new route fails here until it has a case above (or an exemption saying where it is tested)."""
    routes = gateway_operations()
    untested = [
        (m, p)
        for m, p in routes
        if (m, p) not in EXEMPT and not any(c.method == m and _matches(p, c.path) for c in CASES)
    ]
    assert sorted(untested) == []
    stale = [(c.method, c.path) for c in CASES if not any(m == c.method and _matches(p, c.path) for m, p in routes)]
    assert stale == []  # no case for a route that is gone


def _table_route(case: Case) -> Route | None:
    for route in ROUTES:
        if route.method == case.method and _matches("/v1" + route.path, case.path):
            return route
    return None


def allowed_roles(case: Case) -> tuple[str, ...]:
    if case.roles is not None:
        return case.roles
    route = _table_route(case)
    assert route is not None, f"{case.method} {case.path}: name its roles"
    return tuple(
        name
        for name, role in STAFF.items()
        if route.action in POLICY[role] and (name not in ESTATE_SCOPED or route.estate is not None)
    )


def refused_role(case: Case) -> str:
    if case.refused is not None:
        return case.refused
    allowed = allowed_roles(case)
    route = _table_route(case)
    outside = [n for n, role in STAFF.items() if route is not None and route.action not in POLICY[role]]
    return outside[0] if outside else ("tenant1" if allowed else "admin")


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


async def _send(stack: Stack, who: str, case: Case, ids: dict[str, str]) -> httpx.Response:
    headers = {"Idempotency-Key": f"sweep-{uuid.uuid4().hex}"}
    kwargs: dict[str, Any] = {"params": _fill(case.params, ids)}
    if case.csv is not None:
        headers["Content-Type"] = "text/csv"
        kwargs["content"] = _fill(case.csv, ids).encode()
    elif case.method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = _fill(case.body if case.body is not None else {}, ids)
    async with stack.client(who) as client:
        return await client.request(case.method, _fill(case.path, ids), headers=headers, **kwargs)


async def _dynamic_ids(stack: Stack) -> dict[str, str]:
    """Objects the rows act on that the backends number themselves: a payment and its transaction, a subsidy's
    transaction, a payment order, a cash shift, a command, an alarm and a work order."""
    ids = dict(stack.ids)
    async with stack.client("admin") as admin, stack.client("cashier") as cashier:
        paid = await _ok(await admin.post(f"/v1/accounts/{ids['A2']}/topups", json={"amount": "30.00"}, headers=_key()))
        ids["payment"], ids["txn"] = paid.json()["payment_id"], paid.json()["txn_id"]
        subsidy = await _ok(
            await admin.post(
                f"/v1/accounts/{ids['A2']}/subsidies", json={"amount": "2.00", "program": "低保补贴"}, headers=_key()
            )
        )
        ids["subsidy_txn"] = subsidy.json()["txn_id"]
        shift = await _ok(await cashier.post("/v1/cash/shifts", json={"counter_id": f"S-{ids['E']}"}, headers=_key()))
        ids["shift"] = shift.json()["shift_id"]
        command = await _ok(await _command(admin, ids["M1"], "time_sync"))
        ids["command"] = command.json()["command_id"]
        await _ok(
            await admin.put(f"/v1/meters/X{ids['M1']}/binding", json={"account_id": ids["A4"], "utility": "water"})
        )
    async with stack.client("tenant2") as tenant:
        order = await _ok(
            await tenant.post(f"/v1/me/accounts/{ids['A2']}/topups", json={"amount": "15.00"}, headers=_key())
        )
        ids["order"] = order.json()["order_id"]
    sequences = iter(range(20_000, 30_000))
    async with stack.client("admin") as admin:

        async def alarm() -> str | None:
            await _announce(stack, ids["A2"], BalanceLevel.LOW_2, "1.00", next(sequences))
            found = (await admin.get("/v1/alarms", params={"source_id": ids["A2"], "alarm_type": "balance_low"})).json()
            return next((a["alarm_id"] for a in found["items"] if a["state"] == "active"), None)

        ids["alarm"] = await eventually(alarm, "the household's low-balance alarm", interval=0.5)
    conn = await asyncpg.connect(stack.database_url)
    try:  # a work order as a device fault opens one, on the household's alarm (a fault needs minutes offline)
        work_order = uuid.uuid4()
        await conn.execute(
            "INSERT INTO alarm.work_orders (work_order_id, alarm_id, device_id, fault_type, estate) "
            "VALUES ($1, $2, $3, 'meter_offline', $4)",
            work_order,
            uuid.UUID(ids["alarm"]),
            ids["M1"],
            ids["E"],
        )
        await conn.execute(
            "INSERT INTO collector.device_state (meter_id, online, relay) VALUES ($1, true, 'closed') "
            "ON CONFLICT (meter_id) DO NOTHING",
            ids["M1"],
        )
        # A reading billed after the move-out, so the settlement has its final reading.
        await conn.execute(
            "INSERT INTO billing.watermarks (meter_id, register, value, sampled_at) "
            "VALUES ($1, 'energy_active_import_total', 1234.56, now()) ON CONFLICT (meter_id, register) DO NOTHING",
            ids["M1"],
        )
    finally:
        await conn.close()
    ids["work_order"] = str(work_order)
    return ids


async def test_every_route_works_for_the_roles_it_allows_and_refuses_one_it_does_not(stack: Stack) -> None:
    ids = await _dynamic_ids(stack)
    problems: list[str] = []
    for case in CASES:
        allowed = allowed_roles(case)
        assert allowed, f"{case.method} {case.path}: no role may call it"
        for who in allowed[:1] if case.once else allowed:
            response = await _send(stack, who, case, ids)
            if response.status_code not in case.ok:
                problems.append(f"{who} {case.method} {case.path}: {response.status_code} {response.text[:200]}")
        refused = refused_role(case)
        response = await _send(stack, refused, case, ids)
        if response.status_code not in (403, 404):
            problems.append(f"refused {refused} {case.method} {case.path}: {response.status_code}")
    assert problems == [], "\n".join(problems)


async def test_an_estate_switches_its_night_window_off_with_two_nulls(stack: Stack) -> None:
    estate = f"{stack.ids['E']}-NIGHTS"  # an estate of its own: the others keep their night window
    async with stack.client("admin") as admin:
        lone = await admin.put(f"/v1/estates/{estate}/policy", json={"nights_start": None})
        off = await admin.put(f"/v1/estates/{estate}/policy", json={"nights_start": None, "nights_end": None})
        read = await admin.get(f"/v1/estates/{estate}/policy")
    assert lone.status_code == 422, lone.text
    assert off.status_code == 204, off.text
    assert (read.json()["nights_start"], read.json()["nights_end"]) == (None, None), read.text
