"""Usage history, monthly statements (JSON, CSV, PDF) and charge explanations over real HTTP against
the billing app on real PostgreSQL, with consumption billed from real readings under a flat
electricity price and a tiered water tariff with a sewage component."""

from __future__ import annotations

import csv
import io
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shuidian_billing.adapters.billing import Billing
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "statements") as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        electricity = {"unit_price": "0.613", "effective_from": "2020-01-01T00:00:00+00:00"}
        assert (await client.put("/v1/tariffs/electricity", json=electricity)).status_code == 204
        water = {
            "effective_from": "2021-03-01T00:00:00+08:00",
            "components": [
                {
                    "kind": "tiered",
                    "name": "阶梯水价",
                    "period": "month",
                    "blocks": [
                        {"label": "一档", "width": "10", "unit_price": "3.00"},
                        {"label": "二档", "width": None, "unit_price": "4.50"},
                    ],
                },
                {"kind": "flat", "name": "污水处理费", "unit_price": "0.95"},
            ],
        }
        response = await client.post("/v1/tariffs/water/versions", json=water)
        assert response.status_code == 201, response.text
        yield client


async def new_account(client: httpx.AsyncClient) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/accounts/{account}", json={"name": "张三 <3-402>"})).status_code == 204
    return account


async def pay(client: httpx.AsyncClient, account: str, amount: str, channel: str = "cash") -> dict[str, Any]:
    response = await client.post(
        f"/v1/accounts/{account}/topups",
        json={"amount": amount, "channel": channel, "reference": "柜台"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    payment: dict[str, Any] = response.json()
    return payment


async def consume(app: FastAPI, client: httpx.AsyncClient, account: str, utility: Utility, quantity: Decimal) -> str:
    """Bill `quantity` on a fresh meter over the three hours ending two hours ago, posted to the ledger."""
    meter = f"{utility.value[0].upper()}-{uuid.uuid4().hex[:8]}"
    binding = await client.put(f"/v1/meters/{meter}/binding", json={"account_id": account, "utility": utility.value})
    assert binding.status_code == 204, binding.text
    billing: Billing = app.state.container.billing
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    readings = tuple(
        Reading.create(meter, utility, start + timedelta(hours=h), registers={REGISTER[utility]: value})
        for h, value in ((0, Decimal("1000")), (3, Decimal("1000") + quantity))
    )
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=readings), "")
    await billing.poster.flush(before=start + timedelta(hours=5))
    return meter


def this_month() -> str:
    return f"{datetime.now(SHANGHAI):%Y-%m}"


def month_after(month: str) -> str:
    year, number = map(int, month.split("-"))
    return f"{year + number // 12}-{number % 12 + 1:02d}"


def money(value: str) -> Decimal:
    return Decimal(value)


async def get_statement(client: httpx.AsyncClient, account: str, month: str) -> dict[str, Any]:
    response = await client.get(f"/v1/accounts/{account}/statements/{month}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_statement_reconciles_and_explains_its_charges(app: FastAPI, client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    await pay(client, account, "100.00")
    await pay(client, account, "50.00", "wechat")
    electric = await consume(app, client, account, Utility.ELECTRICITY, Decimal("10"))  # 10 × 0.613
    await consume(app, client, account, Utility.WATER, Decimal("12"))  # 10 × 3.00 + 2 × 4.50 + 12 × 0.95
    month = this_month()
    doc = await get_statement(client, account, month)
    balance = money((await client.get(f"/v1/accounts/{account}")).json()["balance"])
    totals = {k: money(v) for k, v in doc["totals"].items()}
    assert money(doc["opening_balance"]) == 0
    assert money(doc["closing_balance"]) == balance
    assert money(doc["opening_balance"]) + totals["payments"] - totals["charges"] == money(doc["closing_balance"])
    assert doc["reconciles"] is True
    assert totals["payments"] == Decimal("150.00")
    charges = {k: money(v) for k, v in doc["charges_by_utility"].items()}
    assert charges["electricity"] == Decimal("6.13")
    assert Decimal("50.39") <= charges["water"] <= Decimal("50.40")  # a sub-fen remainder may still be carried
    assert totals["charges"] == charges["electricity"] + charges["water"]
    usage = {u["utility"]: money(u["quantity"]) for u in doc["usage"]}
    assert usage == {"electricity": Decimal("10"), "water": Decimal("12")}
    water = {(b["component"], b["label"]): b for b in doc["tariff_breakdown"] if b["utility"] == "water"}
    assert {k: (money(b["quantity"]), money(b["unit_price"])) for k, b in water.items()} == {
        ("阶梯水价", "一档"): (Decimal("10"), Decimal("3.00")),
        ("阶梯水价", "二档"): (Decimal("2"), Decimal("4.50")),
        ("污水处理费", "污水处理费"): (Decimal("12"), Decimal("0.95")),
    }
    assert sum(money(b["amount_exact"]) for b in water.values()) == Decimal("50.40")
    assert [line["channel"] for line in doc["lines"]["payments"]] == ["cash", "wechat"]

    # The next month opens where this one closed and, with nothing booked yet, closes there too.
    later = await get_statement(client, account, month_after(month))
    assert money(later["opening_balance"]) == money(later["closing_balance"]) == balance
    assert later["lines"]["payments"] == []

    ledger = (await client.get(f"/v1/accounts/{account}/ledger", params={"limit": 100})).json()
    charge = next(e for e in ledger if e["kind"] == "consumption" and e["meter_id"] == electric)
    explained = (await client.get(f"/v1/ledger/transactions/{charge['txn_id']}/explain")).json()
    assert (explained["meter_id"], explained["account_id"]) == (electric, account)
    assert money(explained["posted"]) == -money(charge["amount"])
    assert money(explained["posted"]) <= money(explained["exact"]) < money(explained["posted"]) + Decimal("0.01") * 2
    [line] = explained["lines"]
    assert (line["component"], money(line["unit_price"]), line["unit"]) == ("flat", Decimal("0.613"), "kWh")
    readings = line["readings"]
    assert Decimal("1000") <= money(readings["register_from"]) < money(readings["register_to"]) <= Decimal("1010")
    assert money(line["amount_exact"]) == money(line["quantity"]) * Decimal("0.613")

    # Every water charge explained: together they show both tiers and the sewage component.
    water_lines = []
    for entry in ledger:
        if entry["kind"] == "consumption" and entry["meter_id"] != electric:
            water_lines += (await client.get(f"/v1/ledger/transactions/{entry['txn_id']}/explain")).json()["lines"]
    assert {(x["component"], x["segment_or_tier"]) for x in water_lines} == set(water)
    assert sum(money(x["amount_exact"]) for x in water_lines) == Decimal("50.40")
    assert sum(money(x["quantity"]) for x in water_lines if x["component"] == "阶梯水价") == Decimal("12")
    payment = next(e for e in ledger if e["kind"] == "topup")
    explained_payment = (await client.get(f"/v1/ledger/transactions/{payment['txn_id']}/explain")).json()
    assert explained_payment["payment"]["channel"] in {"cash", "wechat"}


async def test_statement_as_csv_and_pdf(app: FastAPI, client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    await pay(client, account, "30.00")
    await consume(app, client, account, Utility.ELECTRICITY, Decimal("5"))
    month = this_month()
    doc = await get_statement(client, account, month)
    response = await client.get(f"/v1/accounts/{account}/statements/{month}", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows[1][0].startswith("项目")
    assert rows[2][0].startswith("期初余额")
    assert rows[-1][0].startswith("期末余额")
    assert rows[-1][-1] == doc["closing_balance"] == "26.94"
    pdf = await client.get(f"/v1/accounts/{account}/statements/{month}", params={"format": "pdf"})
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert b"/Type /Page" in pdf.content
    assert b"/FontFile2" in pdf.content  # the Chinese font is embedded (tests/unit/test_statement_pdf.py)
    assert pdf.content.rstrip().endswith(b"%%EOF")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    payments=st.lists(st.integers(min_value=1, max_value=99_999), min_size=0, max_size=3),
    kwh=st.integers(min_value=0, max_value=3_000).map(lambda n: Decimal(n) / 100),
    refund=st.integers(min_value=0, max_value=100),
)
async def test_statement_totals_reconcile_to_the_fen(
    app: FastAPI, client: httpx.AsyncClient, payments: list[int], kwh: Decimal, refund: int
) -> None:
    account = await new_account(client)
    made = [await pay(client, account, str(Decimal(fen) / 100)) for fen in payments]
    if kwh:
        await consume(app, client, account, Utility.ELECTRICITY, kwh)
    if made and refund:
        amount = min(Decimal(refund) / 100, Decimal(made[0]["amount"]))
        response = await client.post(
            f"/v1/payments/{made[0]['payment_id']}/refunds",
            json={"amount": str(amount), "operator": "财务", "reason": "测试"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert response.status_code in (201, 409), response.text
    doc = await get_statement(client, account, this_month())
    totals = {k: money(v) for k, v in doc["totals"].items()}
    closing = money(doc["opening_balance"]) + totals["payments"] - totals["charges"] - totals["refunds"]
    assert closing == money(doc["closing_balance"])
    assert closing == money((await client.get(f"/v1/accounts/{account}")).json()["balance"])
    assert totals["payments"] == sum((Decimal(fen) for fen in payments), Decimal(0)) / 100


async def test_usage_history_by_hour_day_and_month_in_local_time(app: FastAPI, client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    meter = await consume(app, client, account, Utility.ELECTRICITY, Decimal("9"))
    hourly = (await client.get(f"/v1/meters/{meter}/usage", params={"granularity": "hour"})).json()
    # The gap between the two readings is spread over the hours it spans.
    assert len(hourly["buckets"]) >= 1
    assert sum(money(b["quantity"]) for b in hourly["buckets"]) == Decimal("9")
    assert all(b["start"].endswith("+08:00") for b in hourly["buckets"])
    assert money(hourly["total_quantity"]) == Decimal("9")
    assert money(hourly["total_cost"]) == Decimal("9") * Decimal("0.613")
    for granularity in ("day", "month"):
        result = (await client.get(f"/v1/meters/{meter}/usage", params={"granularity": granularity})).json()
        assert money(result["total_quantity"]) == Decimal("9")
        starts = [datetime.fromisoformat(b["start"]) for b in result["buckets"]]
        assert all((s.hour, s.minute) == (0, 0) for s in starts)
        assert all(s.day == 1 for s in starts) or granularity == "day"
    empty = (await client.get(f"/v1/meters/{meter}/usage", params={"end": "2020-01-02T00:00:00+08:00"})).json()
    assert empty["buckets"] == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/accounts/{account}/statements/2026-13", 422),
        ("/v1/accounts/{account}/statements/26-01", 422),
        ("/v1/accounts/nobody-{account}/statements/2026-01", 404),
        ("/v1/accounts/{account}/statements/2026-01?format=docx", 422),
        (
            "/v1/meters/E-x/usage?granularity=hour&start=2026-01-01T00:00:00%2B08:00&end=2026-03-01T00:00:00%2B08:00",
            422,
        ),
        ("/v1/meters/E-x/usage?start=2026-01-02T00:00:00%2B08:00&end=2026-01-01T00:00:00%2B08:00", 422),
        ("/v1/meters/E-x/usage?start=2026-01-01T00:00:00", 422),
        ("/v1/ledger/transactions/{uuid}/explain", 404),
    ],
)
async def test_bad_document_requests_get_problem_details(client: httpx.AsyncClient, path: str, status: int) -> None:
    account = await new_account(client)
    response = await client.get(path.format(account=account, uuid=uuid.uuid4()))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_household_usage_counts_each_quantity_once_across_tariff_components(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    account = await new_account(client)
    await consume(app, client, account, Utility.WATER, Decimal("12"))  # tiered + sewage: two components
    await consume(app, client, account, Utility.ELECTRICITY, Decimal("4"))
    for granularity in ("hour", "day", "month"):
        result = (await client.get(f"/v1/accounts/{account}/usage", params={"granularity": granularity})).json()
        by_utility: dict[str, tuple[Decimal, Decimal]] = {}
        for bucket in result["buckets"]:
            quantity, cost = by_utility.get(bucket["utility"], (Decimal(0), Decimal(0)))
            by_utility[bucket["utility"]] = (quantity + money(bucket["quantity"]), cost + money(bucket["cost"]))
        assert by_utility == {
            "electricity": (Decimal("4"), Decimal("4") * Decimal("0.613")),
            "water": (Decimal("12"), Decimal("50.40")),
        }, granularity
