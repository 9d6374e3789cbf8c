"""Readings of a meter nobody pays for are not billed, but counted, listed and (when asked) announced once:
real billing on its own database, readings through its pipeline, the notice through the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomqtt
import pytest
import pytest_asyncio
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, ReadingHeld, Utility

pytestmark = pytest.mark.integration
REGISTER = "energy_active_import_total"
NOON = datetime(2031, 6, 1, 4, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def app(pg_server_url: str, mqtt_url: str) -> AsyncIterator[FastAPI]:
    name = f"shuidian_unknown_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        settings = BillingSettings(
            environment="test",
            database_url=SecretStr(url),
            mqtt_url=mqtt_url,
            mqtt_clean_session=True,
            instance_id=f"unknown-{uuid.uuid4().hex[:6]}",
            unknown_meter_notice=True,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with client_of(app) as client:
                flat = {"unit_price": "0.50", "effective_from": "2030-01-01T00:00:00+08:00"}
                assert (await client.put("/v1/tariffs/electricity", json=flat)).status_code == 204
            yield app
    finally:
        await infra.drop_database(pg_server_url, name)


async def read(app: FastAPI, meter: str, at: datetime, value: str) -> None:
    billing: Billing = app.state.container.billing
    reading = Reading.create(meter, Utility.ELECTRICITY, at, registers={REGISTER: Decimal(value)})
    await billing.readings.on_readings(ReadingBatch(source="test", gateway_id="gw-9", readings=(reading,)), "")


def counted() -> float:
    return REGISTRY.get_sample_value("billing_unknown_meter_readings_total") or 0.0


async def test_an_unknown_meter_is_counted_listed_announced_once_and_billed_once_bound(
    app: FastAPI, mqtt_url: str
) -> None:
    meter = f"E-{uuid.uuid4().hex[:8]}"
    address = BrokerAddress.parse(mqtt_url)
    notices: list[ReadingHeld] = []
    async with aiomqtt.Client(address.host, address.port) as listener, client_of(app) as client:
        await listener.subscribe(topics.reading_held(meter), qos=1)

        async def pump() -> None:
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                notices.append(ReadingHeld.model_validate_json(message.payload))

        task = asyncio.create_task(pump())
        try:
            before = counted()
            await read(app, meter, NOON, "100.00")
            await read(app, meter, NOON + timedelta(hours=1), "101.00")
            assert counted() - before == 2
            listed = (await client.get("/v1/unknown-meters")).json()
            (entry,) = [m for m in listed["meters"] if m["meter_id"] == meter]
            assert entry["readings"] == 2
            assert entry["gateway_id"] == "gw-9"
            assert entry["utility"] == "electricity"
            assert datetime.fromisoformat(entry["last_sampled_at"]) == NOON + timedelta(hours=1)
            assert Decimal(entry["last_registers"][REGISTER]) == Decimal("101.00")
            assert datetime.fromisoformat(entry["last_seen"]) >= datetime.fromisoformat(entry["first_seen"])
            async with asyncio.timeout(10):
                while not notices:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a second notice would have arrived by now
            assert [(n.meter_id, n.reason, n.value) for n in notices] == [(meter, "unknown_meter", Decimal("100.00"))]

            billing: Billing = app.state.container.billing
            async with billing.engine.connect() as conn:
                marks = (
                    await conn.execute(
                        text("SELECT count(*) FROM billing.watermarks WHERE meter_id = :m"), {"m": meter}
                    )
                ).scalar_one()
            assert marks == 0  # nothing opened: the readings were not billed

            account = f"acc-{uuid.uuid4().hex[:8]}"
            assert (await client.put(f"/v1/accounts/{account}", json={"name": "王五"})).status_code == 204
            binding = {"account_id": account, "utility": "electricity"}
            assert (await client.put(f"/v1/meters/{meter}/binding", json=binding)).status_code == 204
            await read(app, meter, NOON + timedelta(hours=2), "101.50")  # opens the watermark
            await read(app, meter, NOON + timedelta(hours=3), "102.50")  # bills 1 kWh
            listed = (await client.get("/v1/unknown-meters")).json()
            assert meter not in {m["meter_id"] for m in listed["meters"]}
            assert counted() - before == 2
            async with billing.engine.connect() as conn:
                charged = (
                    await conn.execute(
                        text("SELECT sum(quantity) FROM billing.charge_lines WHERE meter_id = :m"), {"m": meter}
                    )
                ).scalar_one()
            assert charged == Decimal(1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
