"""A database outage while readings arrive loses nothing: billing keeps the batches it received,
retries them in order once PostgreSQL is back, and the bill is the one a clean run gives, to the fen
— also under 尖峰平谷, where a reading lost in the gap would move consumption between rates.

The outage is real: billing reaches PostgreSQL through a TCP proxy that drops every connection and
refuses new ones, and readings travel through the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomqtt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_devstack.faults import TcpProxy, proxy_to
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
CST = timedelta(hours=8)


@pytest.fixture
async def own_database(pg_server_url: str) -> AsyncIterator[str]:
    name = f"shuidian_outage_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        yield url
    finally:
        await infra.drop_database(pg_server_url, name)


async def watermark(engine: AsyncEngine, meter: str) -> Decimal | None:
    async with engine.connect() as conn:
        value: Decimal | None = (
            await conn.execute(
                text(
                    "SELECT value FROM billing.watermarks WHERE meter_id = :m AND register = 'energy_active_import_total'"
                ),
                {"m": meter},
            )
        ).scalar_one_or_none()
    return value


async def publish(mqtt_url: str, gateway: str, meter: str, at: datetime, value: str) -> None:
    reading = Reading.create(meter, Utility.ELECTRICITY, at, registers={"energy_active_import_total": Decimal(value)})
    batch = ReadingBatch(source="outage-test", gateway_id=gateway, readings=(reading,))
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        await client.publish(topics.readings(gateway), batch.model_dump_json().encode(), qos=1)


async def until_watermark(engine: AsyncEngine, meter: str, value: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while await watermark(engine, meter) != Decimal(value):
            await asyncio.sleep(0.1)


async def test_readings_received_during_a_database_outage_are_billed_in_order_after_it(
    own_database: str, mqtt_url: str
) -> None:
    direct = create_engine(own_database)  # the test's own view, not through the proxy
    async with proxy_to(own_database) as proxy:
        app = create_app(
            BillingSettings(
                environment="test",
                database_url=SecretStr(proxy.url_through(own_database)),
                mqtt_url=mqtt_url,
                mqtt_clean_session=True,
                instance_id=f"outage-{uuid.uuid4().hex[:6]}",
                flush_interval_seconds=3600,
            )
        )
        try:
            async with app.router.lifespan_context(app):
                await _outage_scenario(app, proxy, direct, mqtt_url)
        finally:
            await direct.dispose()


async def _outage_scenario(app: FastAPI, proxy: TcpProxy, direct: AsyncEngine, mqtt_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    estate, building, floor, room = f"est-{suffix}", f"b-{suffix}", f"f-{suffix}", f"r-{suffix}"
    meter, gateway, tenant, lease = f"E-{suffix}", f"gw-outage-{suffix}", f"t-{suffix}", f"L-{suffix}"
    async with client_of(app) as http:

        async def ok(method: str, path: str, body: dict[str, object]) -> dict[str, object]:
            response = await http.request(method, path, json=body)
            assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
            return response.json() if response.content else {}

        await ok(
            "POST",
            "/v1/tariffs/electricity/versions",
            {
                "effective_from": "2030-01-01T00:00:00+08:00",
                "components": [
                    {
                        "kind": "tou",
                        "rates": [{"label": "峰", "unit_price": "1.00"}, {"label": "谷", "unit_price": "0.30"}],
                        "segments": [{"start": "07:00", "rate": "峰"}, {"start": "23:00", "rate": "谷"}],
                    }
                ],
            },
        )
        await ok("PUT", f"/v1/estates/{estate}", {"name": "停库苑", "shared_balance": True})
        await ok("PUT", f"/v1/buildings/{building}", {"estate_id": estate, "name": "1栋"})
        await ok("PUT", f"/v1/floors/{floor}", {"building_id": building, "level": 1})
        await ok("PUT", f"/v1/rooms/{room}", {"floor_id": floor, "code": f"1-01-{suffix}", "area_m2": "40.00"})
        await ok("PUT", f"/v1/rooms/{room}/meters/{meter}", {"utility": "electricity"})
        await ok("PUT", f"/v1/tenants/{tenant}", {"name": "李四", "phone": "13800000001"})
        account = str(
            (await ok("PUT", f"/v1/leases/{lease}", {"tenant_id": tenant, "room_id": room, "move_in": "2030-01-01"}))[
                "account_id"
            ]
        )

    evening = datetime(2030, 3, 5, tzinfo=UTC) - CST + timedelta(hours=20)  # 20:00 local
    await publish(mqtt_url, gateway, meter, evening, "1000.00")
    await until_watermark(direct, meter, "1000.00")

    await proxy.cut()  # PostgreSQL goes away while a reading is on its way
    await publish(mqtt_url, gateway, meter, evening + timedelta(hours=2, minutes=30), "1010.00")
    await asyncio.sleep(3)  # several failed tries of that batch
    assert await watermark(direct, meter) == Decimal("1000.00")
    await proxy.restore()
    await publish(mqtt_url, gateway, meter, evening + timedelta(hours=12), "1012.00")
    await until_watermark(direct, meter, "1012.00")

    async with direct.connect() as conn:
        lines = {
            row.label: (row.q, row.a)
            for row in await conn.execute(
                text(
                    "SELECT label, sum(quantity) AS q, sum(amount) AS a FROM billing.charge_lines "
                    "WHERE account_id = :a GROUP BY label"
                ),
                {"a": account},
            )
        }
    # 20:00 → 22:30: 10 kWh, all 峰. 22:30 → 08:00: 2 kWh over 9.5 h, of which 1.5 h 峰 and 8 h 谷.
    # Had the 22:30 reading been lost, 20:00 → 08:00 would put 4 kWh at 峰 and 8 at 谷.
    peak = Decimal(10) + Decimal(2) * Decimal("1.5") / Decimal("9.5")
    valley = Decimal(2) * Decimal(8) / Decimal("9.5")
    assert abs(lines["峰"][0] - peak) < Decimal("0.000001")
    assert abs(lines["谷"][0] - valley) < Decimal("0.000001")
    total = lines["峰"][1] + lines["谷"][1]
    assert total.quantize(Decimal("0.01")) == (peak * Decimal("1.00") + valley * Decimal("0.30")).quantize(
        Decimal("0.01")
    )
