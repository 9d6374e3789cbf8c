"""Readings that go missing on their way are still billed in the order they were measured, to the
fen — under 尖峰平谷 a reading lost in a gap would move consumption between rates. Two ways to lose
one, both real: PostgreSQL goes away while readings arrive (billing reaches it through a TCP proxy
that drops every connection and refuses new ones), and a broker acknowledges a batch and loses it
(the batch is never published: billing sees the jump in the gateway's batch numbers and asks the
collector — played here by the test — to publish it again). Readings travel through the real broker.

The household: 峰 07:00–23:00 at 1.00, 谷 at 0.30; readings at 20:00 (1000.00), 22:30 (1010.00, the
one in trouble) and 08:00 the next day (1012.00). 20:00 → 22:30 is 10 kWh of 峰; 22:30 → 08:00 is
2 kWh over 9.5 h, 1.5 h of it 峰 and 8 h 谷. Without the 22:30 reading, 20:00 → 08:00 would put 4 kWh
at 峰 and 8 at 谷."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

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
from shuidian_shared.messages import Reading, ReadingBatch, ReplayRequest, Utility

pytestmark = pytest.mark.integration
CST = timedelta(hours=8)
EVENING = datetime(2030, 3, 5, tzinfo=UTC) - CST + timedelta(hours=20)  # 20:00 local
READINGS = [
    (EVENING, "1000.00"),
    (EVENING + timedelta(hours=2, minutes=30), "1010.00"),
    (EVENING + timedelta(hours=12), "1012.00"),
]
PEAK = Decimal(10) + Decimal(2) * Decimal("1.5") / Decimal("9.5")
VALLEY = Decimal(2) * Decimal(8) / Decimal("9.5")


@pytest.fixture(scope="module")
def broker_url(mqtt_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own where mosquitto is installed: billing's shared subscription
    must not lend these batches to another test's billing, nor receive theirs."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        yield mqtt_url
        return
    broker = infra.Broker(tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@dataclass
class Household:
    meter: str
    gateway: str
    account: str
    db: AsyncEngine  # the test's own view of the database, never through the proxy
    mqtt_url: str

    def batch(self, index: int, *, sequence: int | None = None) -> ReadingBatch:
        at, value = READINGS[index]
        reading = Reading.create(
            self.meter, Utility.ELECTRICITY, at, registers={"energy_active_import_total": Decimal(value)}
        )
        epoch = "store-1" if sequence is not None else None
        return ReadingBatch(source="test", gateway_id=self.gateway, readings=(reading,), epoch=epoch, sequence=sequence)

    async def publish(self, batch: ReadingBatch) -> None:
        address = BrokerAddress.parse(self.mqtt_url)
        async with aiomqtt.Client(address.host, address.port) as client:
            await client.publish(topics.readings(self.gateway), batch.model_dump_json().encode(), qos=1)

    async def watermark(self) -> Decimal | None:
        async with self.db.connect() as conn:
            value: Decimal | None = (
                await conn.execute(
                    text(
                        "SELECT value FROM billing.watermarks WHERE meter_id = :m AND register = 'energy_active_import_total'"
                    ),
                    {"m": self.meter},
                )
            ).scalar_one_or_none()
        return value

    async def until_billed_through(self, index: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.watermark() != Decimal(READINGS[index][1]):
                await asyncio.sleep(0.1)

    async def charged_by_rate(self) -> dict[str, tuple[Decimal, Decimal]]:
        async with self.db.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT label, sum(quantity) AS q, sum(amount) AS a FROM billing.charge_lines "
                    "WHERE account_id = :a GROUP BY label"
                ),
                {"a": self.account},
            )
            return {row.label: (row.q, row.a) for row in rows}

    async def gaps(self) -> list[tuple[int, int, str]]:
        """The gaps billing recorded in this household's gateway stream: first, last, how it ended."""
        async with self.db.connect() as conn:
            rows = await conn.execute(
                text("SELECT from_sequence, to_sequence, state FROM billing.reading_gaps WHERE gateway_id = :g"),
                {"g": self.gateway},
            )
            return [(r.from_sequence, r.to_sequence, r.state) for r in rows]

    async def assert_billed_in_measured_order(self) -> None:
        lines = await self.charged_by_rate()
        assert abs(lines["峰"][0] - PEAK) < Decimal("0.000001")
        assert abs(lines["谷"][0] - VALLEY) < Decimal("0.000001")
        total = lines["峰"][1] + lines["谷"][1]
        assert total.quantize(Decimal("0.01")) == (PEAK + VALLEY * Decimal("0.30")).quantize(Decimal("0.01"))


@contextlib.asynccontextmanager
async def household(
    pg_server_url: str, mqtt_url: str, *, through_proxy: bool, **options: object
) -> AsyncIterator[tuple[Household, TcpProxy]]:
    """A billing service on a database of its own (through a cuttable proxy if asked) with one TOU household."""
    name = f"shuidian_lost_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    db = create_engine(url)
    try:
        async with proxy_to(url) as proxy:
            app = create_app(
                BillingSettings(
                    environment="test",
                    database_url=SecretStr(proxy.url_through(url) if through_proxy else url),
                    mqtt_url=mqtt_url,
                    mqtt_clean_session=True,
                    instance_id=f"lost-{uuid.uuid4().hex[:6]}",
                    flush_interval_seconds=3600,
                    **options,  # type: ignore[arg-type]
                )
            )
            async with app.router.lifespan_context(app):
                suffix = uuid.uuid4().hex[:8]
                account = await _tou_household(app, suffix)
                yield Household(f"E-{suffix}", f"gw-lost-{suffix}", account, db, mqtt_url), proxy
    finally:
        await db.dispose()
        await infra.drop_database(pg_server_url, name)


async def _tou_household(app: FastAPI, suffix: str) -> str:
    estate, building, floor, room = f"est-{suffix}", f"b-{suffix}", f"f-{suffix}", f"r-{suffix}"
    async with client_of(app) as http:

        async def ok(method: str, path: str, body: dict[str, object]) -> dict[str, object]:
            response = await http.request(method, path, json=body)
            assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
            return response.json() if response.content else {}

        tou = {
            "kind": "tou",
            "rates": [{"label": "峰", "unit_price": "1.00"}, {"label": "谷", "unit_price": "0.30"}],
            "segments": [{"start": "07:00", "rate": "峰"}, {"start": "23:00", "rate": "谷"}],
        }
        await ok(
            "POST",
            "/v1/tariffs/electricity/versions",
            {"effective_from": "2030-01-01T00:00:00+08:00", "components": [tou]},
        )
        await ok("PUT", f"/v1/estates/{estate}", {"name": "丢包苑", "shared_balance": True})
        await ok("PUT", f"/v1/buildings/{building}", {"estate_id": estate, "name": "1栋"})
        await ok("PUT", f"/v1/floors/{floor}", {"building_id": building, "level": 1})
        await ok("PUT", f"/v1/rooms/{room}", {"floor_id": floor, "code": f"1-01-{suffix}", "area_m2": "40.00"})
        await ok("PUT", f"/v1/rooms/{room}/meters/E-{suffix}", {"utility": "electricity"})
        await ok("PUT", f"/v1/tenants/t-{suffix}", {"name": "李四", "phone": "13800000001"})
        lease = await ok(
            "PUT", f"/v1/leases/L-{suffix}", {"tenant_id": f"t-{suffix}", "room_id": room, "move_in": "2030-01-01"}
        )
        return str(lease["account_id"])


async def test_readings_received_during_a_database_outage_are_billed_in_order_after_it(
    pg_server_url: str, broker_url: str
) -> None:
    async with household(pg_server_url, broker_url, through_proxy=True) as (home, proxy):
        await home.publish(home.batch(0))
        await home.until_billed_through(0)
        await proxy.cut()  # PostgreSQL goes away while a reading is on its way
        await home.publish(home.batch(1))
        await asyncio.sleep(3)  # several failed tries of that batch
        assert await home.watermark() == Decimal(READINGS[0][1])
        await proxy.restore()
        await home.publish(home.batch(2))
        await home.until_billed_through(2)
        await home.assert_billed_in_measured_order()


async def test_a_batch_the_broker_lost_is_asked_for_again_and_billed_in_its_place(
    pg_server_url: str, broker_url: str
) -> None:
    async with household(pg_server_url, broker_url, through_proxy=False, gap_wait_seconds=60) as (home, _):
        address = BrokerAddress.parse(broker_url)
        async with aiomqtt.Client(address.host, address.port) as collector:  # the collector's side of a replay
            await collector.subscribe(topics.gateway_replay(home.gateway), qos=1)
            await home.publish(home.batch(0, sequence=1))
            await home.until_billed_through(0)
            await home.publish(home.batch(2, sequence=3))  # #2 was acknowledged by a broker that then lost it
            async with asyncio.timeout(20):
                message = await anext(aiter(collector.messages))
            assert isinstance(message.payload, bytes)
            request = ReplayRequest.model_validate_json(message.payload)
            assert (request.epoch, request.from_sequence, request.to_sequence) == ("store-1", 2, 2)
            assert await home.watermark() == Decimal(READINGS[0][1])  # #3 waits for #2
            await home.publish(home.batch(1, sequence=2))
            await home.until_billed_through(2)
        await home.assert_billed_in_measured_order()
        assert await home.gaps() == [(2, 2, "replayed")]


async def test_a_gap_that_never_comes_back_is_recorded_and_billing_goes_on(pg_server_url: str, broker_url: str) -> None:
    async with household(pg_server_url, broker_url, through_proxy=False, gap_wait_seconds=1) as (home, _):
        await home.publish(home.batch(0, sequence=1))
        await home.until_billed_through(0)
        await home.publish(home.batch(2, sequence=3))
        await home.until_billed_through(2)
        lines = await home.charged_by_rate()
        gaps = await home.gaps()
    assert gaps == [(2, 2, "lost")]
    assert lines["峰"][0] + lines["谷"][0] == Decimal(12)  # the consumption is all there, split as if #2 never was
