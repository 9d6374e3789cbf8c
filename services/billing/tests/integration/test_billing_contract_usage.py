"""Usage history books a gap's quantity in the hours it spans, by the time-proration pricing uses, and the
money does not move: per meter, the history's quantity and cost are what was charged. Real billing on
its own database, readings through its reading pipeline, the history read over its HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_devstack.billing_harness import billing_on_own_database, client_of
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGISTER = "energy_active_import_total"
# 20:00 local on 31 October 2031: the gap below runs into November.
EVENING = datetime(2031, 10, 31, 20, tzinfo=SHANGHAI).astimezone(UTC)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    async with billing_on_own_database(pg_server_url, mqtt_url, "contract-usage") as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as client:
        # A monthly tier: the month boundary inside a gap matters to the money, and so to the history.
        tiered = {
            "effective_from": "2030-01-01T00:00:00+08:00",
            "components": [
                {
                    "kind": "tiered",
                    "name": "阶梯电价",
                    "period": "month",
                    "blocks": [
                        {"label": "一档", "width": "4", "unit_price": "0.50"},
                        {"label": "二档", "width": None, "unit_price": "0.80"},
                    ],
                }
            ],
        }
        response = await client.post("/v1/tariffs/electricity/versions", json=tiered)
        assert response.status_code == 201, response.text
        yield client


async def bound_meter(client: httpx.AsyncClient) -> tuple[str, str]:
    account, meter = f"acc-{uuid.uuid4().hex[:8]}", f"E-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/accounts/{account}", json={"name": "李四"})).status_code == 204
    binding = await client.put(f"/v1/meters/{meter}/binding", json={"account_id": account, "utility": "electricity"})
    assert binding.status_code == 204, binding.text
    return account, meter


async def read(app: FastAPI, meter: str, *readings: tuple[datetime, str]) -> None:
    billing: Billing = app.state.container.billing
    for at, value in readings:
        reading = Reading.create(meter, Utility.ELECTRICITY, at, registers={REGISTER: Decimal(value)})
        await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="g", readings=(reading,)), "")


async def charged(app: FastAPI, meter: str) -> tuple[Decimal, Decimal]:
    """The quantity and exact cost the charge path produced for the meter (its charge decomposition)."""
    billing: Billing = app.state.container.billing
    async with billing.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(quantity), 0), coalesce(sum(amount), 0) FROM billing.charge_lines WHERE meter_id = :m"
                ),
                {"m": meter},
            )
        ).one()
    return row[0], row[1]


def local_hours(buckets: list[dict[str, str]]) -> dict[str, Decimal]:
    return {b["start"]: Decimal(b["quantity"]) for b in buckets}


async def test_octobers_usage_stays_in_october(app: FastAPI, client: httpx.AsyncClient) -> None:
    """6 kWh over 20:00 31 Oct → 02:00 1 Nov: 1 kWh in each local hour, four in October, two in November,
    and the tiers price it the same way (4 kWh in October's 一档, 2 kWh in November's)."""
    account, meter = await bound_meter(client)
    await read(app, meter, (EVENING, "100.00"), (EVENING + timedelta(hours=6), "106.00"))
    window = {"granularity": "hour", "start": "2031-10-31T00:00:00+08:00", "end": "2031-11-02T00:00:00+08:00"}
    for path in (f"/v1/meters/{meter}/usage", f"/v1/accounts/{account}/usage"):
        answer = (await client.get(path, params=window)).json()
        assert local_hours(answer["buckets"]) == {
            f"2031-{day}T{hour:02d}:00:00+08:00": Decimal("1.000000")
            for day, hours in (("10-31", (20, 21, 22, 23)), ("11-01", (0, 1)))
            for hour in hours
        }, path
    by_month = (await client.get(f"/v1/accounts/{account}/usage", params={**window, "granularity": "month"})).json()
    assert {(b["start"][:7], Decimal(b["quantity"]), Decimal(b["cost"])) for b in by_month["buckets"]} == {
        ("2031-10", Decimal(4), Decimal("2.00")),  # 4 kWh × 0.50 一档
        ("2031-11", Decimal(2), Decimal("1.00")),  # November starts again in 一档
    }
    assert await charged(app, meter) == (Decimal(6), Decimal("3.00"))


async def test_a_reading_on_the_hour_books_the_hour_it_closes(app: FastAPI, client: httpx.AsyncClient) -> None:
    account, meter = await bound_meter(client)
    await read(app, meter, (EVENING - timedelta(minutes=15), "7.00"), (EVENING, "7.25"))
    answer = (
        await client.get(
            f"/v1/accounts/{account}/usage",
            params={"granularity": "hour", "start": "2031-10-31T19:00:00+08:00", "end": "2031-10-31T21:00:00+08:00"},
        )
    ).json()
    assert local_hours(answer["buckets"]) == {"2031-10-31T19:00:00+08:00": Decimal("0.250000")}


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    steps=st.lists(
        # minutes to the next reading, and hundredths of a kWh per minute: below the 60 kWh/h plausibility
        # limit, so every reading bills and the whole register delta is charged
        st.tuples(st.integers(min_value=1, max_value=60 * 60), st.integers(min_value=0, max_value=99)),
        min_size=1,
        max_size=8,
    ),
    offset=st.integers(min_value=0, max_value=3599),
)
async def test_history_sums_to_what_was_charged_per_meter(
    app: FastAPI, client: httpx.AsyncClient, steps: list[tuple[int, int]], offset: int
) -> None:
    """Any readings: per meter, the hourly history's quantity and cost sum exactly to the charge
    decomposition's (the money path is untouched), however the gaps fall across hours and months."""
    _, meter = await bound_meter(client)
    at, value = EVENING - timedelta(days=2, seconds=offset), Decimal("500.00")
    readings = [(at, str(value))]
    for minutes, per_minute in steps:
        at, value = at + timedelta(minutes=minutes), value + Decimal(minutes * per_minute) / 100
        readings.append((at, str(value)))
    await read(app, meter, *readings)
    billing: Billing = app.state.container.billing
    async with billing.engine.connect() as conn:
        history = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(quantity), 0), coalesce(sum(cost), 0), count(*) FROM billing.usage_hourly "
                    "WHERE meter_id = :m"
                ),
                {"m": meter},
            )
        ).one()
    quantity, cost = await charged(app, meter)
    assert quantity == value - Decimal("500.00")
    assert (history[0], history[1]) == (quantity, cost)
