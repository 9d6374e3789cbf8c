"""The operations routes (routes_operations.py) in front of the REAL backends: an estate manager works inside
their estate and nowhere else, finance reconciles a bank statement through the review queue, a meter
replacement is billed once, alarm rules and subscriptions stay in the caller's estates, and the audit log
records who did each write."""

from __future__ import annotations

import importlib.util
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi.routing import APIRoute

from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import eventually
from shuidian_gateway.api import routes_operations
from shuidian_gateway.domain.policy import POLICY, Action, Role

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"
ROSTER: dict[str, tuple[str, list[str]]] = {
    "manager": ("estate_manager", ["E"]),
    "admin": ("system_admin", ["*"]),
    "finance": ("finance", ["*"]),
    "cashier": ("cashier", ["*"]),
    "maintenance": ("maintenance", ["E"]),
}


@dataclass
class Ops:
    platform: Platform
    database_url: str
    ids: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)

    def client(self, name: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.AsyncClient(base_url=self.platform.urls["gateway"], headers=headers, timeout=15)


def _ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"ops-{uuid.uuid4().hex}"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def ops(database_url: str, mqtt_url: str) -> AsyncIterator[Ops]:
    """Estates E and F, a leased room with a meter in each; staff of every role (manager and maintenance in E)."""
    sfx = secrets.token_hex(3)
    names = ("E", "F", "R1", "R3", "T2", "T3", "L2", "L3", "A2", "A3", "M1", "M3")
    ids = {n: f"{n}-{sfx}" for n in names}
    overrides = {"gateway": {"login_attempts_per_minute": 10_000}}
    async with platform(database_url, mqtt_url, instance=f"ops-{sfx}", overrides=overrides) as p:
        admin = p.staff
        for e, room, tenant, lease, account, meter in (
            ("E", "R1", "T2", "L2", "A2", "M1"),
            ("F", "R3", "T3", "L3", "A3", "M3"),
        ):
            estate, building, floor = ids[e], f"{ids[e]}.1", f"{ids[e]}.1.1"
            _ok(await admin.put(f"/v1/estates/{estate}", json={"name": f"小区 {estate}"}))
            _ok(await admin.put(f"/v1/buildings/{building}", json={"estate_id": estate, "name": "1 栋"}))
            _ok(await admin.put(f"/v1/floors/{floor}", json={"building_id": building, "level": 1}))
            _ok(
                await admin.put(
                    f"/v1/rooms/{ids[room]}", json={"floor_id": floor, "code": f"C{ids[room]}", "area_m2": "50.00"}
                )
            )
            _ok(await admin.put(f"/v1/tenants/{ids[tenant]}", json={"name": "租户", "phone": "13800000009"}))
            body = {"tenant_id": ids[tenant], "room_id": ids[room], "move_in": "2026-06-01", "account_id": ids[account]}
            _ok(await admin.put(f"/v1/leases/{ids[lease]}", json=body))
            _ok(await admin.put(f"/v1/rooms/{ids[room]}/meters/{ids[meter]}", json={"utility": "electricity"}))
        ops = Ops(p, database_url, ids)
        for name, (role, estates) in ROSTER.items():
            username = f"ops-{name}-{sfx}"
            user: dict[str, Any] = {
                "username": username,
                "password": PASSWORD,
                "role": role,
                "estates": [e if e == "*" else ids[e] for e in estates],
            }
            ops.users[name] = _ok(await p.staff.post("/v1/users", json=user)).json()["user_id"]
            token = await p.staff.post(
                "/v1/auth/token", data={"grant_type": "password", "username": username, "password": PASSWORD}
            )
            ops.tokens[name] = _ok(token).json()["access_token"]
        yield ops


async def _balance(client: httpx.AsyncClient, account: str) -> Decimal:
    return Decimal(_ok(await client.get(f"/v1/accounts/{account}")).json()["balance"])


async def test_an_estate_manager_runs_their_estate_and_no_other(ops: Ops) -> None:
    ids = ops.ids
    async with ops.client("manager") as manager:
        common = await manager.put(f"/v1/estates/{ids['E']}/common-meters/P-{ids['M1']}", json={"utility": "water"})
        common_f = await manager.put(f"/v1/estates/{ids['F']}/common-meters/P-{ids['M3']}", json={"utility": "water"})
        run = await manager.post(f"/v1/estates/{ids['E']}/months/2026-11/run")
        run_f = await manager.post(f"/v1/estates/{ids['F']}/months/2026-11/run")
        open_month = await manager.post(f"/v1/estates/{ids['E']}/months/2099-01/run")
        statement = await manager.get(f"/v1/accounts/{ids['A2']}/statements/2026-11")
        pdf = await manager.get(f"/v1/accounts/{ids['A2']}/statements/2026-11", params={"format": "pdf"})
        statement_f = await manager.get(f"/v1/accounts/{ids['A3']}/statements/2026-11")
        meters = await manager.get(f"/v1/estates/{ids['E']}/meters")
        meters_f = await manager.get(f"/v1/estates/{ids['F']}/meters")
        hold = await manager.put(f"/v1/holds/{ids['E']}", json={"reason": "春节不停电"})
        listed = await manager.get("/v1/holds")
        hold_f = await manager.put(f"/v1/holds/{ids['F']}", json={"reason": "春节不停电"})
        hold_all = await manager.put("/v1/holds/all", json={"reason": "春节不停电"})
        lifted = await manager.request("DELETE", f"/v1/holds/{ids['E']}", params={"reason": "节后恢复"})
        no_reason = await manager.request("DELETE", f"/v1/keep-power/households/{ids['A2']}")
        kept = await manager.put(f"/v1/keep-power/estates/{ids['E']}", json={"reason": "other", "note": "高温"})
        kept_f = await manager.put(f"/v1/keep-power/estates/{ids['F']}", json={"reason": "other"})
        unkept = await manager.request("DELETE", f"/v1/keep-power/estates/{ids['E']}", params={"reason": "降温"})
        calendar = await manager.put("/v1/calendar/2096", json={"holidays": ["2096-01-01"], "notice": "通知"})
        audit = await manager.get("/v1/audit-log")
    assert common.status_code == 204, common.text
    assert common_f.status_code == 404, common_f.text
    assert run.status_code == 200, run.text
    assert run.json()["estate_id"] == ids["E"], run.text
    assert run_f.status_code == 404, run_f.text
    assert open_month.status_code == 409, open_month.text  # billing's own answer: the month has not ended
    assert statement.status_code == 200, statement.text
    assert statement.json()["account_id"] == ids["A2"], statement.text
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert statement_f.status_code == 404
    assert meters.status_code == 200, meters.text
    assert ids["M1"] in meters.json()["meters"]
    assert meters_f.status_code == 404
    assert hold.status_code == 204, hold.text
    assert ids["E"] in {h["estate_id"] for h in listed.json()["items"]}
    assert hold_f.status_code == 404
    assert hold_all.status_code == 403
    assert lifted.status_code == 204, lifted.text
    assert no_reason.status_code == 422
    assert kept.status_code == 204, kept.text
    assert kept_f.status_code == 404
    assert unkept.status_code == 204, unkept.text
    assert calendar.status_code == 403  # a calendar holds for every estate
    assert audit.status_code == 403


async def test_lifting_a_households_keep_power_stays_in_the_estate(ops: Ops) -> None:
    ids = ops.ids
    async with ops.client("admin") as admin:
        for account in (ids["A2"], ids["A3"]):
            _ok(await admin.put(f"/v1/keep-power/households/{account}", json={"reason": "medical"}))
    async with ops.client("maintenance") as maintenance:
        not_allowed = await maintenance.request(
            "DELETE", f"/v1/keep-power/households/{ids['A2']}", params={"reason": "康复"}
        )
    async with ops.client("manager") as manager:
        theirs = await manager.request("DELETE", f"/v1/keep-power/households/{ids['A3']}", params={"reason": "康复"})
        mine = await manager.request("DELETE", f"/v1/keep-power/households/{ids['A2']}", params={"reason": "康复"})
        gone = await manager.get(f"/v1/keep-power/households/{ids['A2']}")
    async with ops.client("admin") as admin:
        still = await admin.get(f"/v1/keep-power/households/{ids['A3']}")
    assert not_allowed.status_code == 403
    assert theirs.status_code == 404
    assert mine.status_code == 204, mine.text
    assert gone.status_code == 404
    assert still.status_code == 200, still.text


async def test_finance_reconciles_a_bank_statement_through_the_review_queue(ops: Ops) -> None:
    ids = ops.ids
    tx = uuid.uuid4().hex[:8]
    csv = (
        "交易日期,交易流水号,付款人,金额,附言\n"
        f"2026-11-20,{tx}1,张三,100.00,缴水电费 {ids['A2']}\n"
        f"2026-11-21,{tx}2,王五,30.00,水电费\n"
        f"2026-11-22,{tx}3,赵六,10.00,不明款项\n"
    ).encode("gb18030")  # as banks export it
    headers = {"Content-Type": "text/csv", **_key()}
    async with ops.client("finance") as finance:
        before = await _balance(finance, ids["A2"])
        not_csv = await finance.post(
            "/v1/payments/bank/imports", content=b'{"amount": "100.00"}', headers={"Content-Type": "text/csv", **_key()}
        )
        imported = await finance.post("/v1/payments/bank/imports", content=csv, headers=headers)
        replayed = await finance.post("/v1/payments/bank/imports", content=csv, headers=headers)
        queue = _ok(await finance.get("/v1/payments/reviews")).json()["items"]
        review = {r["subject"]: r["review_id"] for r in queue}
        to_assign, to_dismiss = review[f"txn:{tx}2"], review[f"txn:{tx}3"]
        assign_key = _key()
        assigned = await finance.post(
            f"/v1/payments/reviews/{to_assign}/assign", json={"account_id": ids["A2"]}, headers=assign_key
        )
        again = await finance.post(
            f"/v1/payments/reviews/{to_assign}/assign", json={"account_id": ids["A2"]}, headers=assign_key
        )
        dismissed = await finance.post(f"/v1/payments/reviews/{to_dismiss}/dismiss", json={"reason": "已退回付款人"})
        after = await _balance(finance, ids["A2"])
    async with ops.client("manager") as manager:
        manager_import = await manager.post("/v1/payments/bank/imports", content=csv, headers=headers)
        manager_assign = await manager.post(
            f"/v1/payments/reviews/{to_assign}/assign", json={"account_id": ids["A2"]}, headers=_key()
        )
    async with ops.client("cashier") as cashier:
        cashier_dismiss = await cashier.post(f"/v1/payments/reviews/{to_dismiss}/dismiss", json={"reason": "x"})
    assert not_csv.status_code == 400, not_csv.text
    assert imported.status_code == 201, imported.text
    assert (imported.json()["matched"], imported.json()["review"]) == (1, 2), imported.text
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert assigned.status_code == 200, assigned.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["status"] == "dismissed"
    assert after - before == Decimal("130.00")  # the matched line and the assigned one, each once
    assert manager_import.status_code == 403
    assert manager_assign.status_code == 403
    assert cashier_dismiss.status_code == 403


async def test_a_meter_replacement_is_billed_once_and_only_finance_declares_it(ops: Ops) -> None:
    ids = ops.ids
    conn = await asyncpg.connect(ops.database_url)
    try:  # the register watermark a priced reading leaves, an hour ago
        await conn.execute(
            "INSERT INTO billing.watermarks (meter_id, register, value, sampled_at) "
            "VALUES ($1, 'energy_active_import_total', 100, now() - interval '1 hour') "
            "ON CONFLICT (meter_id, register) DO UPDATE SET value = 100, sampled_at = EXCLUDED.sampled_at",
            ids["M1"],
        )
        at = (await conn.fetchval("SELECT now()")).isoformat()
    finally:
        await conn.close()
    event = {
        "kind": "replaced",
        "at": at,
        "reason": "换表",
        "old_closing_register": "105",
        "new_opening_register": "0",
    }
    key = _key()
    async with ops.client("manager") as manager:
        manager_event = await manager.post(f"/v1/meters/{ids['M1']}/events", json=event, headers=_key())
    async with ops.client("finance") as finance:
        loose = await finance.post(
            f"/v1/meters/{ids['M1']}/events", json={**event, "old_closing_register": 105}, headers=_key()
        )
        unix_time = await finance.post(
            f"/v1/meters/{ids['M1']}/events", json={**event, "at": 1_800_000_000}, headers=_key()
        )
        incomplete = await finance.post(
            f"/v1/meters/{ids['M1']}/events",
            json={"kind": "rollover", "at": at, "reason": "走字翻转"},  # no register_after
            headers=_key(),
        )
        declared = await finance.post(f"/v1/meters/{ids['M1']}/events", json=event, headers=key)
        replayed = await finance.post(f"/v1/meters/{ids['M1']}/events", json=event, headers=key)
        reading = await finance.get(f"/v1/meters/{ids['M1']}/reading")
    assert manager_event.status_code == 403
    assert loose.status_code == 422  # register values are canonical strings, as money is
    assert unix_time.status_code == 422  # instants are ISO 8601 text with an offset
    assert incomplete.status_code == 422
    assert incomplete.json()["code"] == "validation_error"  # the contract says what each kind needs
    assert declared.status_code == 201, declared.text
    assert replayed.status_code == 201
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json() == declared.json()
    assert reading.status_code == 200, reading.text
    assert Decimal(reading.json()["registers"]["energy_active_import_total"]) == 0


async def test_alarm_rules_and_subscriptions_stay_in_the_callers_estates(ops: Ops) -> None:
    ids = ops.ids
    rule = {"kind": "threshold", "measure": "over_voltage", "limit": "245.5"}
    subscription = {"audience": "staff", "role": "maintenance", "channel": "email", "address": "ops@example.com"}
    async with ops.client("admin") as admin:
        theirs = _ok(await admin.post("/v1/alarm-subscriptions", json={**subscription, "estate": ids["F"]})).json()
    async with ops.client("manager") as manager:
        estate_rule = await manager.put(
            "/v1/alarm-rules",
            json={"scope_level": "estate", "scope_key": ids["E"], "slot": "over_voltage", "rule": rule},
        )
        other_rule = await manager.put(
            "/v1/alarm-rules",
            json={"scope_level": "estate", "scope_key": ids["F"], "slot": "over_voltage", "rule": rule},
        )
        meter_rule = await manager.put(
            "/v1/alarm-rules",
            json={"scope_level": "meter", "scope_key": ids["M1"], "slot": "over_voltage", "rule": rule},
        )
        # Alarm's copy of where a meter belongs is seeded, as the devstack does (alarm does not learn it yet).
        target = {"estate": ids["E"], "account_id": ids["A2"]}
        _ok(await ops.platform.internal.put(f"{ops.platform.urls['alarm']}/v1/targets/{ids['M1']}", json=target))

        async def applies() -> bool:
            found = await manager.get("/v1/alarm-rules/effective", params={"meter_id": ids["M1"]})
            assert found.status_code == 200, found.text
            return any(r["slot"] == "over_voltage" and r["rule"]["limit"] == "245.5" for r in found.json()["items"])

        assert await applies()
        effective_f = await manager.get("/v1/alarm-rules/effective", params={"meter_id": ids["M3"]})
        mine = await manager.post("/v1/alarm-subscriptions", json={**subscription, "estate": ids["E"]})
        other = await manager.post("/v1/alarm-subscriptions", json={**subscription, "estate": ids["F"]})
        everywhere = await manager.post("/v1/alarm-subscriptions", json=subscription)
        listed = await manager.get("/v1/alarm-subscriptions")
        delete_theirs = await manager.delete(f"/v1/alarm-subscriptions/{theirs['subscription_id']}")
        delete_mine = await manager.delete(f"/v1/alarm-subscriptions/{mine.json()['subscription_id']}")
        removed_rule = await manager.request(
            "DELETE", "/v1/alarm-rules", params={"scope_level": "estate", "scope_key": ids["E"], "slot": "over_voltage"}
        )
    async with ops.client("maintenance") as maintenance:
        maintenance_rule = await maintenance.put(
            "/v1/alarm-rules",
            json={"scope_level": "estate", "scope_key": ids["E"], "slot": "over_voltage", "rule": rule},
        )
    async with ops.client("admin") as admin:
        delete_as_admin = await admin.delete(f"/v1/alarm-subscriptions/{theirs['subscription_id']}")
    assert estate_rule.status_code == 200, estate_rule.text
    assert other_rule.status_code == 403
    assert meter_rule.status_code == 403  # a meter's rule would reach past an estate boundary unchecked
    assert effective_f.status_code == 404
    assert mine.status_code == 201, mine.text
    assert other.status_code == 403
    assert everywhere.status_code == 403
    assert {s["estate"] for s in listed.json()["items"]} == {ids["E"]}
    assert delete_theirs.status_code == 404
    assert delete_mine.status_code == 204, delete_mine.text
    assert removed_rule.status_code == 204, removed_rule.text
    assert maintenance_rule.status_code == 403
    assert delete_as_admin.status_code == 204, delete_as_admin.text


async def test_the_audit_log_names_who_did_each_write(ops: Ops) -> None:
    ids = ops.ids
    marker = f"/v1/holds/{ids['E']}"
    conn = await asyncpg.connect(ops.database_url)
    try:
        since = (await conn.fetchval("SELECT now()")).isoformat()
    finally:
        await conn.close()
    async with ops.client("manager") as manager:
        _ok(await manager.put(marker, json={"reason": "审计测试"}))
        _ok(await manager.request("DELETE", marker, params={"reason": "审计测试"}))
    async with ops.client("admin") as admin:

        async def both() -> httpx.Response | None:
            """Each row is written as its answer goes out, so the last write's row may trail its answer."""
            found = await admin.get("/v1/audit-log", params={"path": marker, "since": since})
            return found if found.status_code != 200 or len(found.json()["items"]) >= 2 else None

        found = await eventually(both, "both writes in the audit log", interval=0.1)
        by_manager = await admin.get(
            "/v1/audit-log", params={"principal": f"user:{ops.users['manager']}", "method": "DELETE", "limit": 1}
        )
        policy = await admin.get("/v1/policy-log", params={"subject": f"estate:{ids['E']}"})
    async with ops.client("finance") as finance:
        refused = await finance.get("/v1/audit-log")
    assert found.status_code == 200, found.text
    rows: list[dict[str, Any]] = found.json()["items"]
    # two writes back to back may be recorded in either order (see above)
    assert sorted((r["method"], r["status"]) for r in rows) == [("DELETE", 204), ("PUT", 204)]
    assert {r["principal"] for r in rows} == {f"user:{ops.users['manager']}"}
    assert {r["role"] for r in rows} == {"estate_manager"}
    assert by_manager.status_code == 200, by_manager.text
    assert [r["path"] for r in by_manager.json()["items"]] == [marker]
    assert policy.status_code == 200, policy.text
    assert {e["actor"] for e in policy.json()["items"]} >= {f"user:{ops.users['manager']}"}
    assert refused.status_code == 403


async def test_a_batch_preview_and_schedule_removal_respect_estates(ops: Ops) -> None:
    ids = ops.ids
    batch = {"kind": "trip", "reason": "欠费预览"}
    async with ops.client("admin") as admin:
        scheduled = await admin.post(
            "/v1/commands/scheduled",
            json={"name": "每日校时", "kind": "time_sync", "at_local": "02:00:00", "meters": [ids["M1"]]},
            headers=_key(),
        )
    schedule_id = _ok(scheduled).json()["schedule_id"]
    async with ops.client("maintenance") as maintenance:
        mine = await maintenance.post("/v1/commands/batch/preview", json={**batch, "meters": [ids["M1"]]})
        mixed = await maintenance.post("/v1/commands/batch/preview", json={**batch, "meters": [ids["M1"], ids["M3"]]})
    async with ops.client("manager") as manager:
        scoped_delete = await manager.delete(f"/v1/schedules/{schedule_id}")
    async with ops.client("admin") as admin:
        deleted = await admin.delete(f"/v1/schedules/{schedule_id}")
        listed = _ok(await admin.get("/v1/schedules")).json()["items"]
    assert mine.status_code == 200, mine.text
    assert mine.json()["preview"] is True
    assert [m["meter_id"] for m in mine.json()["meters"]] == [ids["M1"]]
    assert mixed.status_code == 403  # control never hears of the other estate's meter
    assert scoped_delete.status_code == 403
    assert deleted.status_code == 204, deleted.text
    assert schedule_id not in {s["schedule_id"] for s in listed}


async def test_the_registry_is_exported_and_a_meter_removed_inside_the_estate(ops: Ops) -> None:
    ids = ops.ids
    gateway, bus = f"GW-{ids['E']}", f"GW-{ids['E']}-1"
    async with ops.client("admin") as admin:
        _ok(await admin.put(f"/v1/gateways/{gateway}", json={"name": "东区网关"}))
        _ok(
            await admin.put(
                f"/v1/buses/{bus}", json={"gateway_id": gateway, "host": "127.0.0.1", "port": 9, "protocol": "dlt645"}
            )
        )
        for n, meter in (("01", "M1"), ("03", "M3")):
            body = {"bus_id": bus, "address": f"0000000002{n}", "model": "dds1588", "utility": "electricity"}
            _ok(await admin.put(f"/v1/meters/{ids[meter]}", json=body))
        exported = await admin.get("/v1/commissioning")
    async with ops.client("maintenance") as maintenance:
        scoped_export = await maintenance.get("/v1/commissioning")
        theirs = await maintenance.delete(f"/v1/meters/{ids['M3']}")
        mine = await maintenance.delete(f"/v1/meters/{ids['M1']}")
        gone = await maintenance.get(f"/v1/meters/{ids['M1']}")
        whole_bus = await maintenance.delete(f"/v1/buses/{bus}")
    async with ops.client("cashier") as cashier:
        cashier_delete = await cashier.delete(f"/v1/meters/{ids['M3']}")
    async with ops.client("admin") as admin:
        still = await admin.get(f"/v1/meters/{ids['M3']}")
        removed_gateway = await admin.delete(f"/v1/gateways/{gateway}")
        bus_gone = await admin.get(f"/v1/buses/{bus}")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text.lstrip("\ufeff").startswith("gateway_id,")
    assert ids["M1"] in exported.text
    assert scoped_export.status_code == 403
    assert theirs.status_code == 404
    assert mine.status_code == 204, mine.text
    assert gone.status_code == 404
    assert whole_bus.status_code == 403  # a bus may serve several estates
    assert cashier_delete.status_code == 403
    assert still.status_code == 200, still.text
    assert removed_gateway.status_code == 204, removed_gateway.text
    assert bus_gone.status_code == 404


async def test_the_notification_log_is_for_all_estates_principals(ops: Ops) -> None:
    unknown = str(uuid.uuid4())
    async with ops.client("admin") as admin:
        log = await admin.get("/v1/notifications", params={"status": "dead"})
        retry = await admin.post(f"/v1/notifications/{unknown}/retry")
    async with ops.client("manager") as manager:
        scoped_log = await manager.get("/v1/notifications")
        scoped_retry = await manager.post(f"/v1/notifications/{unknown}/retry")
    assert log.status_code == 200, log.text
    assert all(n["status"] == "dead" for n in log.json()["items"])
    assert retry.status_code == 404  # alarm's own answer: no dead notification with that id
    assert retry.headers["content-type"].startswith("application/problem+json")
    assert scoped_log.status_code == 403
    assert scoped_retry.status_code == 403


def _real_stack_module() -> Any:
    """test_gateway_real_stack.py, loaded for its route table (the suite imports test modules by path)."""
    path = Path(__file__).with_name("test_gateway_real_stack.py")
    spec = importlib.util.spec_from_file_location("gateway_real_stack_table", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_real_stack_rows_of_these_routes_name_the_roles_their_action_allows() -> None:
    """The rows for these routes write their roles out: they must agree with the policy table, so a changed
    grant fails here instead of leaving a role untested."""
    table = _real_stack_module()
    staff: dict[str, Role] = table.STAFF
    checked = 0
    for route in routes_operations.router.routes:
        assert isinstance(route, APIRoute)
        action = Action(route.openapi_extra["x-required-action"])  # type: ignore[index]
        for method in route.methods or ():
            cases = [c for c in table.CASES if c.method == method and table._matches(route.path, c.path)]
            for case in cases:
                checked += 1
                granted = {name for name, role in staff.items() if action in POLICY[role]}
                everywhere = {name for name in granted if name not in table.ESTATE_SCOPED}
                assert set(case.roles) <= granted, f"{method} {route.path}: a listed role lacks {action.value}"
                assert everywhere <= set(case.roles), f"{method} {route.path}: an all-estates role is missing"
                refused = case.refused or "tenant1"
                assert refused not in case.roles
                assert refused not in everywhere, f"{method} {route.path}: the refused role may call it"
    assert checked > 30
