"""The alarm service as deployed: its own process surface (uvicorn, real broker, real PostgreSQL), inputs over
MQTT, configuration and maintenance through the REST API, bad input answered with problem+json."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_alarm.app import create_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import TEST_SUBJECT, UNSIGNED, free_port, refused_credentials, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_shared import topics
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandOrigin,
    CommandState,
    CommandUpdate,
    MeterRef,
    Utility,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"api-{port}",
        http_port=port,
        tick_seconds=0.2,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


def uid() -> str:
    return uuid.uuid4().hex[:8]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def test_a_balance_event_over_mqtt_raises_a_low_balance_alarm_placed_in_its_room(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    estate, account, meter = f"estate-{uid()}", f"acc-{uid()}", f"E-{uid()}"
    put = await api.put(
        "/v1/targets",
        json={
            "targets": [
                {"meter_id": meter, "account_id": account, "estate": estate, "building": "1", "room": "101"},
            ]
        },
    )
    assert put.status_code == 200, put.text
    event = BalanceEvent(
        source="billing-test",
        account_id=account,
        kind=BalanceEventKind.LOW_1,
        level=BalanceLevel.LOW_1,
        balance=Decimal("12.00"),
        sequence=1,
        meters=(MeterRef(meter_id=meter, utility=Utility.ELECTRICITY),),
    )
    await publish(mqtt_url, (topics.balance(account), event))

    async def raised() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"estate": estate})).json()
        return found or None

    (alarm,) = await eventually(raised, "the low-balance alarm")
    assert (alarm["alarm_type"], alarm["source_id"], alarm["room"]) == ("balance_low", account, "101")

    # Acknowledging needs a service token; who acknowledged is its subject, not the body's `by`.
    url = f"/v1/alarms/{alarm['alarm_id']}/acknowledge"
    for case, headers in refused_credentials("alarm").items():
        problem(await api.post(url, json={"by": "someone-else"}, headers=headers, auth=UNSIGNED), 401)
        assert (await api.get(f"/v1/alarms/{alarm['alarm_id']}")).json()["state"] == "active", case
    acknowledged = await api.post(url, json={"by": "someone-else"})
    assert acknowledged.status_code == 200, acknowledged.text
    assert (acknowledged.json()["state"], acknowledged.json()["acknowledged_by"]) == ("acknowledged", TEST_SUBJECT)


async def test_rules_are_validated_and_the_most_specific_applies(api: httpx.AsyncClient) -> None:
    meter = f"E-{uid()}"
    bad_kind = await api.put(
        "/v1/rules", json={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage", "rule": {"kind": "x"}}
    )
    assert problem(bad_kind, 422)["code"] == "invalid_rule"
    wrong_slot = {"kind": "threshold", "measure": "under_voltage", "limit": "190"}
    mismatch = await api.put(
        "/v1/rules", json={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage", "rule": wrong_slot}
    )
    assert problem(mismatch, 422)["code"] == "invalid_rule"
    float_limit = {"kind": "threshold", "measure": "over_voltage", "limit": "abc"}
    invalid = await api.put(
        "/v1/rules", json={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage", "rule": float_limit}
    )
    problem(invalid, 422)
    keyless = await api.put(
        "/v1/rules",
        json={
            "scope_level": "estate",
            "slot": "over_voltage",
            "rule": {"kind": "threshold", "measure": "over_voltage", "limit": "240"},
        },
    )
    problem(keyless, 422)
    good = {"kind": "threshold", "measure": "over_voltage", "limit": "245.5", "raise_after": 60}
    ok = await api.put(
        "/v1/rules", json={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage", "rule": good}
    )
    assert ok.status_code == 200, ok.text
    effective = (await api.get("/v1/rules/effective", params={"meter_id": meter})).json()
    (over,) = [r for r in effective if r["slot"] == "over_voltage"]
    assert (over["rule"]["limit"], over["rule"]["raise_after"]) == ("245.5", "PT1M")
    gone = await api.delete("/v1/rules", params={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage"})
    assert gone.status_code == 204
    problem(
        await api.delete("/v1/rules", params={"scope_level": "meter", "scope_key": meter, "slot": "over_voltage"}),
        404,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"audience": "tenant", "tenant_id": "t-1", "channel": "mqtt", "address": "t-2"},  # another tenant's topic
        {"audience": "tenant", "tenant_id": "t-1", "estate": "E1", "channel": "email", "address": "a@b.cn"},
        {"audience": "tenant", "tenant_id": "t-1", "channel": "webhook", "address": "http://x.cn/h"},
        {"audience": "staff", "channel": "email", "address": "a@b.cn"},  # no role
        {"audience": "staff", "role": "maintenance", "channel": "sms", "address": "call me"},
        {"audience": "staff", "role": "maintenance", "channel": "email", "address": "a@b.cn", "quiet_start": "22:00"},
        {"audience": "staff", "role": "maintenance", "channel": "fax", "address": "123456"},
    ],
)
async def test_bad_subscriptions_are_refused(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    problem(await api.post("/v1/subscriptions", json=body), 422)


async def test_a_device_fault_opens_a_work_order_that_maintenance_works_to_closure(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    estate, meter = f"estate-{uid()}", f"E-{uid()}"
    await api.put(f"/v1/targets/{meter}", json={"estate": estate, "building": "2", "room": "202"})
    update = CommandUpdate(
        source="control-test",
        command_id=uuid.uuid4(),
        meter_id=meter,
        kind=CommandKind.TRIP,
        state=CommandState.FAILED,
        origin=CommandOrigin.BILLING,
        detail="meter refused",
    )
    await publish(mqtt_url, (topics.command_update(meter), update))

    async def opened() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await api.get("/v1/work-orders", params={"estate": estate})).json()
        return found or None

    (order,) = await eventually(opened, "a work order for the failed command")
    assert (order["device_id"], order["fault_type"], order["status"]) == (meter, "command_failed", "open")
    faults = (await api.get("/v1/faults", params={"estate": estate, "device_id": meter})).json()
    assert [f["alarm_type"] for f in faults] == ["command_failed"]
    problem(await api.get("/v1/faults", params={"fault_type": "balance_low"}), 422)

    url = f"/v1/work-orders/{order['work_order_id']}"
    problem(await api.patch(url, json={"by": "lead", "status": "in_progress"}), 409)  # nobody assigned yet
    assigned = await api.patch(url, json={"by": "lead", "assignee": "electrician-7"})
    assert assigned.json()["status"] == "assigned"
    for status in ("in_progress", "resolved"):
        assert (await api.patch(url, json={"by": "electrician-7", "status": status})).status_code == 200
    problem(await api.patch(url, json={"by": "lead", "status": "closed"}), 409)  # no closing cause
    closed = await api.patch(
        url, json={"by": "lead", "status": "closed", "closing_cause": "relay replaced", "note": "tested OK"}
    )
    body = closed.json()
    assert (body["status"], body["closing_cause"]) == ("closed", "relay replaced")
    assert [n["note"] for n in body["notes"]][-1] == "tested OK"
    assert {n["author"] for n in body["notes"]} == {TEST_SUBJECT}  # the token's subject, whatever `by` says
    problem(await api.patch(url, json={"by": "lead", "status": "open"}), 409)
    mttr = (await api.get("/v1/work-orders/mttr")).json()
    (ours,) = [m for m in mttr if m["estate"] == estate]
    assert ours["repairs"] == 1
    assert ours["mean_seconds"] >= 0


async def test_a_work_order_opened_by_hand_is_listed_and_worked_like_any_other(api: httpx.AsyncClient) -> None:
    estate, meter = f"estate-{uid()}", f"E-{uid()}"
    body = {"device_id": meter, "fault_type": "tenant_report", "estate": estate, "description": "显示屏不亮"}
    opened = await api.post("/v1/work-orders", json={**body, "assignee": "electrician-7"})
    assert opened.status_code == 201, opened.text
    order = opened.json()
    assert (order["alarm_id"], order["status"], order["opened_by"]) == (None, "assigned", TEST_SUBJECT)
    assert order["description"] == "显示屏不亮"
    assert [n["author"] for n in order["notes"]] == [TEST_SUBJECT]
    listed = (await api.get("/v1/work-orders", params={"estate": estate})).json()
    assert [o["work_order_id"] for o in listed] == [order["work_order_id"]]
    url = f"/v1/work-orders/{order['work_order_id']}"
    for status in ("in_progress", "resolved"):
        assert (await api.patch(url, json={"status": status})).status_code == 200
    (ours,) = [m for m in (await api.get("/v1/work-orders/mttr")).json() if m["estate"] == estate]
    assert ours["repairs"] == 1
    problem(await api.post("/v1/work-orders", json={**body, "opened_by": "someone-else"}), 422)
    problem(await api.post("/v1/work-orders", json={"device_id": meter, "fault_type": "x"}), 422)


async def test_history_pages_carry_a_cursor_and_bad_queries_are_problems(api: httpx.AsyncClient) -> None:
    first = await api.get("/v1/alarms", params={"limit": 1})
    assert first.status_code == 200
    cursor = first.headers.get("x-next-cursor")
    assert cursor
    second = await api.get("/v1/alarms", params={"limit": 1, "cursor": cursor})
    assert second.json()[0]["alarm_id"] != first.json()[0]["alarm_id"]
    problem(await api.get("/v1/alarms", params={"cursor": "not-a-cursor"}), 422)
    problem(await api.get("/v1/alarms", params={"state": "open"}), 422)
    problem(await api.get("/v1/alarms", params={"since": "2026-01-01T00:00:00"}), 422)  # naive time


async def test_staff_resolve_an_alarm_by_hand_with_a_reason_and_its_recurrence_opens_a_new_one(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    group, master = f"LL-{uid()}", f"E-{uid()}"

    def over(day: int) -> LineLossExceeded:
        return LineLossExceeded(
            source="insights-test",
            group_id=group,
            master_meter_id=master,
            day=date(2026, 12, day),
            loss_pct=Decimal("12.5"),
            threshold_pct=Decimal("8"),
            master_quantity=Decimal("1000"),
            sub_quantity=Decimal("875"),
            completeness_pct=Decimal("100"),
            estate_id="Estate-LL",
        )

    async def open_alarms() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"source_id": group})).json()
        return [a for a in found if a["state"] != "cleared"] or None

    await publish(mqtt_url, (topics.line_loss(group), over(1)))
    (alarm,) = await eventually(open_alarms, "the line-loss alarm")
    url = f"/v1/alarms/{alarm['alarm_id']}/resolve"
    version = alarm["version"]

    for case, headers in refused_credentials("alarm").items():
        problem(await api.post(url, json={"reason": "x"}, headers=headers, auth=UNSIGNED), 401)
        assert (await api.get(f"/v1/alarms/{alarm['alarm_id']}")).json()["state"] == "active", case
    problem(await api.post(url, json={}), 422)  # a reason is required
    problem(await api.post(url, json={"reason": ""}), 422)
    problem(await api.post(url, json={"reason": "x", "expected_version": True}), 422)
    stale = await api.post(url, json={"reason": "查过了", "expected_version": version + 1})
    assert problem(stale, 409)["code"] == "version_conflict"
    stale_ack = await api.post(f"/v1/alarms/{alarm['alarm_id']}/acknowledge", json={"expected_version": version + 7})
    assert problem(stale_ack, 409)["code"] == "version_conflict"
    assert (await api.get(f"/v1/alarms/{alarm['alarm_id']}")).json()["version"] == version  # nothing changed

    acked = await api.post(f"/v1/alarms/{alarm['alarm_id']}/acknowledge", json={"expected_version": version})
    assert acked.status_code == 200, acked.text
    assert (acked.json()["state"], acked.json()["version"]) == ("acknowledged", version + 1)
    reason = "总表接线松动，已紧固 · master meter wiring loose, fixed"
    resolved = await api.post(url, json={"reason": reason, "expected_version": version + 1})
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert (body["state"], body["resolved_by"], body["resolution"]) == ("cleared", TEST_SUBJECT, reason)
    assert body["resolved_at"] is not None
    assert body["cleared_at"] is not None
    assert body["version"] == version + 2
    again = await api.post(url, json={"reason": reason})
    assert problem(again, 409)["code"] == "invalid_transition"

    log = (await api.get(f"/v1/alarms/{alarm['alarm_id']}/actions")).json()
    assert [(a["action"], a["actor"], a["reason"], a["version"]) for a in log] == [
        ("acknowledge", TEST_SUBJECT, None, version + 1),
        ("resolve", TEST_SUBJECT, reason, version + 2),
    ]
    problem(await api.get(f"/v1/alarms/{uuid.uuid4()}/actions"), 404)
    problem(await api.post(f"/v1/alarms/{uuid.uuid4()}/resolve", json={"reason": "x"}), 404)

    # The group loses too much again the next day: a new alarm, the resolved one stays as it was.
    await publish(mqtt_url, (topics.line_loss(group), over(2)))
    (recurred,) = await eventually(open_alarms, "the recurrence as a new alarm")
    assert recurred["alarm_id"] != alarm["alarm_id"]
    assert (recurred["state"], recurred["occurrences"], recurred["estate"]) == ("active", 1, "Estate-LL")
    kept = (await api.get(f"/v1/alarms/{alarm['alarm_id']}")).json()
    assert (kept["state"], kept["resolution"], kept["version"]) == ("cleared", reason, version + 2)
