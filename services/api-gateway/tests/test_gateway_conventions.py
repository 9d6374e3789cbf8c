"""The API conventions end to end through the gateway: the tenant API's happy paths, paging with
cursors and sorting, ETags and If-Match, Idempotency-Key replay and conflict, PDF and CSV
passthrough, and "not offered yet" as a 501 problem."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from shuidian_gateway.testing import Harness, gateway_harness

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        yield harness


async def test_tenant_reads_balance_usage_live_values_and_explanation(gw: Harness) -> None:
    async with gw.client("tenant_a") as a:
        balance = (await a.get("/v1/me/accounts/A-A")).json()
        usage = await a.get(
            "/v1/me/accounts/A-A/usage", params={"granularity": "month", "start": "2026-01-01T00:00:00+08:00"}
        )
        today = await a.get("/v1/me/accounts/A-A/usage/today")
        live = (await a.get("/v1/me/meters/M-A")).json()
        explain = await a.get("/v1/me/accounts/A-A/transactions/aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa/explain")
        naive = await a.get("/v1/me/accounts/A-A/usage", params={"start": "2026-01-01T00:00:00"})
        bad = await a.get("/v1/me/accounts/A-A/usage", params={"granularity": "minute"})
    assert (balance["balance"], balance["level"]) == ("35.20", "ok")
    assert usage.json()["granularity"] == "month"
    assert today.json()["granularity"] == "hour"
    assert live["device"]["relay"] == "closed"
    assert live["last_reading"]["registers"]
    assert explain.json()["lines"]
    assert naive.status_code == 422  # times must carry their offset
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"


async def test_statement_pdf_passes_through_byte_for_byte(gw: Harness) -> None:
    async with gw.client("tenant_a") as a:
        pdf = await a.get("/v1/me/accounts/A-A/statements/2026-10", params={"format": "pdf"})
        bad_month = await a.get("/v1/me/accounts/A-A/statements/2026-13")
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    assert "statement-A-A-2026-10.pdf" in pdf.headers["content-disposition"]
    assert bad_month.status_code == 422


async def test_tenant_top_up_is_idempotent_and_a_conflicting_replay_is_409(gw: Harness) -> None:
    key = f"tenant-topup-{gw.suffix}"
    async with gw.client("tenant_a") as a:
        first = await a.post("/v1/me/accounts/A-A/topups", json={"amount": "50.00"}, headers={"Idempotency-Key": key})
        replay = await a.post("/v1/me/accounts/A-A/topups", json={"amount": "50.00"}, headers={"Idempotency-Key": key})
        conflict = await a.post(
            "/v1/me/accounts/A-A/topups", json={"amount": "60.00"}, headers={"Idempotency-Key": key}
        )
        status = await a.get(f"/v1/me/payments/{first.json()['order_id']}")
        for amount in ("0.00", "-5.00", "1.001", 5.0):
            invalid = await a.post(
                "/v1/me/accounts/A-A/topups", json={"amount": amount}, headers={"Idempotency-Key": f"{key}-{amount}"}
            )
            assert invalid.status_code == 422
        no_key = await a.post("/v1/me/accounts/A-A/topups", json={"amount": "5.00"})
    assert first.status_code == 201
    assert first.json()["status"] == "open"
    assert replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert status.json()["order_id"] == first.json()["order_id"]
    assert no_key.status_code == 422
    assert len(gw.fake.orders) == 1  # one order, whatever the replays


async def test_idempotency_keys_are_per_principal(gw: Harness) -> None:
    key = f"shared-key-{gw.suffix}"
    async with gw.client("tenant_a") as a, gw.client("tenant_b") as b:
        mine = await a.post("/v1/me/accounts/A-A/topups", json={"amount": "5.00"}, headers={"Idempotency-Key": key})
        theirs = await b.post("/v1/me/accounts/A-B/topups", json={"amount": "5.00"}, headers={"Idempotency-Key": key})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["account_id"] == "A-A"
    assert theirs.json()["account_id"] == "A-B"


async def test_staff_money_posts_replay_the_stored_response(gw: Harness) -> None:
    key = f"counter-{gw.suffix}"
    async with gw.client("cashier") as cashier:
        first = await cashier.post(
            "/v1/accounts/A-A/topups", json={"amount": "20.00"}, headers={"Idempotency-Key": key}
        )
        again = await cashier.post(
            "/v1/accounts/A-A/topups", json={"amount": "20.00"}, headers={"Idempotency-Key": key}
        )
        other = await cashier.post(
            "/v1/accounts/A-B/topups", json={"amount": "20.00"}, headers={"Idempotency-Key": key}
        )
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert other.status_code == 409  # same key, different account: a client bug, refused


async def test_a_command_replay_issues_one_command(gw: Harness) -> None:
    before = len(gw.fake.commands)
    body = {"meter_id": "M-A", "kind": "direct_close", "reason": "paid at the counter"}
    async with gw.client("admin") as admin:
        first = await admin.post("/v1/commands", json=body, headers={"Idempotency-Key": f"cmd-{gw.suffix}"})
        again = await admin.post("/v1/commands", json=body, headers={"Idempotency-Key": f"cmd-{gw.suffix}"})
        batch_body = {"meters": ["M-A", "M-B"], "kind": "time_sync", "reason": "monthly clock sync"}
        batch = await admin.post(
            "/v1/commands/batch", json=batch_body, headers={"Idempotency-Key": f"batch-{gw.suffix}"}
        )
        batch_again = await admin.post(
            "/v1/commands/batch", json=batch_body, headers={"Idempotency-Key": f"batch-{gw.suffix}"}
        )
        scheduled = await admin.post(
            "/v1/commands/scheduled",
            json={"name": "nightly sync", "kind": "time_sync", "at_local": "02:00:00", "meters": ["M-A"]},
            headers={"Idempotency-Key": f"sched-{gw.suffix}"},
        )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert batch.json() == batch_again.json()
    assert len(batch.json()["commands"]) == 2
    assert len(gw.fake.commands) == before + 3  # one single command, one batch of two; replays add nothing
    assert scheduled.status_code == 201
    issued = gw.fake.commands[first.json()["command_id"]]
    assert issued["origin"] == "operator"
    assert "by user:" in issued["reason"]


async def test_lists_page_with_cursors_and_sort(gw: Harness) -> None:
    async with gw.client("finance") as finance:
        first = (await finance.get("/v1/accounts/A-A/ledger", params={"limit": 3, "sort": "entry_id"})).json()
        second = (
            await finance.get(
                "/v1/accounts/A-A/ledger", params={"limit": 3, "sort": "entry_id", "cursor": first["next_cursor"]}
            )
        ).json()
        third = (
            await finance.get(
                "/v1/accounts/A-A/ledger", params={"limit": 3, "sort": "entry_id", "cursor": second["next_cursor"]}
            )
        ).json()
        descending = (await finance.get("/v1/accounts/A-A/ledger", params={"limit": 2, "sort": "-entry_id"})).json()
        bad_cursor = await finance.get("/v1/accounts/A-A/ledger", params={"cursor": "%%%not-ours"})
        bad_sort = await finance.get("/v1/accounts/A-A/ledger", params={"sort": "entry_id; drop table"})
    ids = [e["entry_id"] for page in (first, second, third) for e in page["items"]]
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert third["next_cursor"] is None
    assert [e["entry_id"] for e in descending["items"]] == [7, 6]
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["code"] == "validation_error"
    assert bad_sort.status_code == 422


async def test_etag_and_if_match_on_proxied_resources(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        read = await admin.get("/v1/accounts/A-A")
        etag = read.headers["etag"]
        stale = await admin.put("/v1/accounts/A-A", json={"name": "x"}, headers={"If-Match": 'W/"stale"'})
        fresh = await admin.put(
            "/v1/estates/E1",
            json={"name": "x"},
            headers={"If-Match": (await admin.get("/v1/estates/E1")).headers["etag"]},
        )
    assert etag.startswith('W/"')
    assert stale.status_code == 412
    assert fresh.status_code == 204


async def test_notification_settings_use_versions(gw: Harness) -> None:
    async with gw.client("tenant_b") as b:
        read = await b.get("/v1/me/notification-settings")
        assert read.json()["channels"] == ["app"]
        assert read.headers["etag"] == 'W/"v0"'
        changed = await b.put(
            "/v1/me/notification-settings",
            json={"channels": ["app", "sms"], "quiet_hours": "22:00-07:00"},
            headers={"If-Match": read.headers["etag"]},
        )
        stale = await b.put(
            "/v1/me/notification-settings", json={"channels": ["email"]}, headers={"If-Match": 'W/"v0"'}
        )
        bad = await b.put("/v1/me/notification-settings", json={"quiet_hours": "25:00-07:00"})
        now = await b.get("/v1/me/notification-settings")
    assert changed.status_code == 200
    assert changed.headers["etag"] == 'W/"v1"'
    assert stale.status_code == 412
    assert bad.status_code == 422
    assert now.json()["channels"] == ["app", "sms"]


async def test_csv_commissioning_passes_through(gw: Harness) -> None:
    csv = "gateway_id,bus_id,meter_id\nGW1,GW1-1,M-1\nGW1,GW1-1,M-2\n"
    async with gw.client("maintenance") as maintenance:
        response = await maintenance.post(
            "/v1/commissioning", content=csv.encode(), headers={"Content-Type": "text/csv"}
        )
    assert response.status_code == 200
    assert response.json()["created"] == 2


async def test_a_backend_without_the_route_is_a_501_problem(gw: Harness) -> None:
    async with gw.client("finance") as finance:
        response = await finance.get("/v1/reports/collection-rate", params={"month": "2026-11"})
    assert response.status_code == 501
    assert response.json()["code"] == "not_implemented"


async def test_asyncapi_is_served(gw: Harness) -> None:
    async with gw.client() as anonymous:
        doc = (await anonymous.get("/asyncapi.json")).json()
    assert doc["asyncapi"].startswith("2.6")
