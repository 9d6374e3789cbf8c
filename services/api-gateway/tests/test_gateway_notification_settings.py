"""The tenant app's notification settings through the gateway land in the real alarm service (real PostgreSQL,
real broker): what a tenant saves is what alarm's subscriptions for that tenant say, and nobody else's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_alarm.app import create_app as alarm_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import service_auth
from shuidian_gateway.api.routes_me import migrate_saved_settings, migrate_until_done
from shuidian_gateway.testing import Harness, free_port, gateway_harness, serve

pytestmark = pytest.mark.integration
PATH = "/v1/me/notification-settings"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    port = free_port()
    alarm = alarm_app(
        AlarmSettings(
            environment="test",
            database_url=SecretStr(database_url),
            mqtt_url=mqtt_url,
            instance_id=f"alarm-gw-test-{port}",
            mqtt_clean_session=True,
            http_port=port,
        )
    )
    async with (
        serve(alarm, port),
        gateway_harness(database_url, mqtt_url, alarm_url=f"http://127.0.0.1:{port}") as h,
    ):
        yield h


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def forget_old_rows(gw: Harness) -> AsyncIterator[None]:
    """The gateway's database outlives this module: rows written into the old table here must not reach other tests."""
    yield
    async with gw.app.state.container.runtime.engine.begin() as conn:
        await conn.execute(text("DELETE FROM gateway.notification_settings WHERE tenant_id IN ('T-A', 'T-B')"))
        await conn.execute(text("DELETE FROM gateway.notification_settings WHERE tenant_id LIKE 'T-C-%'"))


async def alarm_subscriptions(gw: Harness, tenant_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=gw.settings.alarm_url, auth=service_auth("alarm")) as alarm:
        found = await alarm.get("/v1/subscriptions", params={"tenant_id": tenant_id})
        found.raise_for_status()
        rows: list[dict[str, Any]] = found.json()
        return rows


async def test_a_tenants_save_becomes_alarms_subscriptions_for_that_tenant_only(gw: Harness) -> None:
    household = gw.fake.household(tenant_id="T-A")
    assert household is not None
    async with gw.client("tenant_a") as a:
        read = await a.get(PATH)
        changed = await a.put(
            PATH,
            json={"low_balance": True, "alarms": False, "channels": ["app", "sms"], "quiet_hours": "22:30-06:45"},
            headers={"If-Match": read.headers["etag"]},
        )
        stale = await a.put(PATH, json={"channels": ["app"]}, headers={"If-Match": read.headers["etag"]})
        now = await a.get(PATH)
    assert read.json() == {
        "low_balance": True,
        "alarms": True,
        "statements": True,
        "channels": ["app"],
        "quiet_hours": None,
    }
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == f'W/"v{int(read.headers["etag"][4:-1]) + 1}"'
    assert stale.status_code == 412
    assert stale.headers["content-type"].startswith("application/problem+json")
    assert now.json()["channels"] == ["app", "sms"]
    assert now.headers["etag"] == changed.headers["etag"]
    subs = {s["channel"]: s for s in await alarm_subscriptions(gw, "T-A") if s["managed_by"] == "tenant_settings"}
    assert set(subs) == {"mqtt", "sms"}
    assert subs["mqtt"]["address"] == "T-A"
    assert subs["sms"]["address"] == household.phone
    for sub in subs.values():
        assert (sub["alarm_types"], sub["quiet_start"], sub["quiet_end"]) == (
            ["balance_low", "balance_exhausted"],
            "22:30",
            "06:45",
        )
    assert [s for s in await alarm_subscriptions(gw, "T-B") if s["channel"] == "sms"] == []


async def test_sms_needs_a_phone_on_file_and_staff_cannot_use_me(gw: Harness) -> None:
    b = gw.fake.household(tenant_id="T-B")
    assert b is not None
    saved_phone, b.phone = b.phone, ""
    try:
        async with gw.client("tenant_b") as tenant_b:
            refused = await tenant_b.put(PATH, json={"channels": ["sms"]})
            wechat = await tenant_b.put(PATH, json={"channels": ["wechat"]})
            after = await tenant_b.get(PATH)
    finally:
        b.phone = saved_phone
    async with gw.client("admin") as admin:
        staff = await admin.get(PATH)
    assert refused.status_code == 422
    assert "phone" in refused.json()["detail"]
    assert wechat.status_code == 422
    assert after.json()["channels"] == ["app"]
    assert staff.status_code == 403


async def test_settings_saved_in_the_gateway_before_are_pushed_to_alarm_once(gw: Harness) -> None:
    old = {"low_balance": False, "alarms": True, "statements": False, "channels": ["app"], "quiet_hours": None}
    engine = gw.app.state.container.runtime.engine
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO gateway.notification_settings (tenant_id, settings, version) "
                "VALUES ('T-B', CAST(:s AS jsonb), 7) ON CONFLICT (tenant_id) DO UPDATE SET settings = EXCLUDED.settings"
            ),
            {"s": json.dumps(old)},
        )
    async with gw.client("tenant_b") as b:
        first = await b.get(PATH)
        again = await b.get(PATH)
        migrated = await alarm_subscriptions(gw, "T-B")
        changed = await b.put(PATH, json={**old, "alarms": False}, headers={"If-Match": again.headers["etag"]})
        later = await b.get(PATH)
    assert first.json() == old
    assert first.headers["etag"] == again.headers["etag"] == 'W/"v1"'
    assert [(s["channel"], s["alarm_types"]) for s in migrated if s["managed_by"] == "tenant_settings"] == [
        ("mqtt", ["water_leak", "usage_spike", "electric_leakage", "overload"])
    ]
    assert changed.status_code == 200
    assert later.json()["alarms"] is False  # the old row is not pushed over what the tenant saved since
    assert [s for s in await alarm_subscriptions(gw, "T-B") if s["managed_by"] == "tenant_settings"] == []


async def test_the_start_up_push_is_idempotent_and_never_overwrites_alarms_newer_settings(gw: Harness) -> None:
    tenant_c = f"T-C-{gw.suffix}"  # no billing record: no phone on file
    async with httpx.AsyncClient(base_url=gw.settings.alarm_url, auth=service_auth("alarm")) as alarm:
        before_a = (await alarm.get("/v1/tenants/T-A/notification-settings")).json()
    engine = gw.app.state.container.runtime.engine
    rows = {
        "T-A": {"channels": ["email"], "quiet_hours": "01:00-02:00"},
        tenant_c: {"low_balance": True, "alarms": False, "channels": ["sms", "wechat"], "quiet_hours": "23:00-06:00"},
    }
    async with engine.begin() as conn:
        for tenant, settings in rows.items():
            await conn.execute(
                text(
                    "INSERT INTO gateway.notification_settings (tenant_id, settings) VALUES (:t, CAST(:s AS jsonb)) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET settings = EXCLUDED.settings"
                ),
                {"t": tenant, "s": json.dumps(settings)},
            )
    upstreams = gw.app.state.container.upstreams
    await migrate_until_done(engine, upstreams, retry_seconds=0.01)
    again = await migrate_saved_settings(engine, upstreams)
    async with httpx.AsyncClient(base_url=gw.settings.alarm_url, auth=service_auth("alarm")) as alarm:
        after_a = (await alarm.get("/v1/tenants/T-A/notification-settings")).json()
        c = (await alarm.get(f"/v1/tenants/{tenant_c}/notification-settings")).json()
    assert again == 0
    assert after_a == before_a
    assert (c["version"], c["channels"], c["quiet_hours"]) == (1, ["app"], "23:00-06:00")
    assert [(s["channel"], s["alarm_types"], s["quiet_start"]) for s in c["subscriptions"]] == [
        ("mqtt", ["balance_low", "balance_exhausted"], "23:00")
    ]
