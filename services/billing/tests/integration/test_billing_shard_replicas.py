"""Two billing replicas on one database and a real broker, each subscribed to its shard: every batch
is billed once, by the replica owning its gateway, and the money equals one process's."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.readings import shard_of
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.billing_harness import flat_priced_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await flat_priced_engine(database_url)
    yield engine
    await engine.dispose()


@contextlib.asynccontextmanager
async def replica(engine: AsyncEngine, mqtt_url: str, index: int, billed: list[str]) -> AsyncIterator[Billing]:
    settings = BillingSettings(environment="test", shard_index=index, shard_count=2, lanes=2)
    link = MqttLink(mqtt_url, service="billing", instance=f"shard-{index}-{uuid.uuid4().hex[:6]}")
    billing = Billing.build(engine, Outbox(engine, link, "billing"), settings, link.client_id)

    def on_commit(batches: Sequence[ReadingBatch]) -> None:
        billed.extend(b.gateway_id for b in batches)

    billing.readings.on_commit = on_commit
    billing.readings.subscribe(link)
    tasks = [asyncio.create_task(link.run())]
    tasks += [asyncio.create_task(billing.readings.bill_loop(lane)) for lane in range(billing.readings.lanes)]
    try:
        await link.wait_connected(10)
        yield billing
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def totals(engine: AsyncEngine, meters: list[str]) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT meter_id, sum(quantity) AS q, sum(amount) AS a FROM billing.accruals "
                "WHERE meter_id = ANY(:m) GROUP BY meter_id"
            ),
            {"m": meters},
        )
        return {r.meter_id: (r.q, r.a) for r in rows}


async def test_two_shards_bill_each_gateway_once_and_exactly(engine: AsyncEngine, mqtt_url: str) -> None:
    run = uuid.uuid4().hex[:6]
    # Four gateways of each shard, whatever this run's names hash to (eight random names fall in one shard
    # once in 128 runs).
    names = (f"GW-{run}-{i}" for i in range(1000))
    by_shard: dict[int, list[str]] = {0: [], 1: []}
    for name in names:
        if len(by_shard[shard_of(name, 2)]) < 4:
            by_shard[shard_of(name, 2)].append(name)
    gateways = by_shard[0] + by_shard[1]
    assert len(gateways) == 8
    setup = Billing.build(
        engine,
        Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="t"), "billing"),
        BillingSettings(environment="test"),
        "setup",
    )
    meters = {g: [f"E-{g}-{m}" for m in range(3)] for g in gateways}
    for g, ms in meters.items():
        account = f"acc-{g}"
        await setup.accounts.put_account(account, "shard test", Decimal("20"), Decimal("5"), Decimal("0"))
        for meter in ms:
            await setup.accounts.bind_meter(meter, account, Utility.ELECTRICITY)
    batches = [
        ReadingBatch(
            source="collector-test",
            gateway_id=g,
            readings=tuple(
                Reading.create(
                    meter,
                    Utility.ELECTRICITY,
                    T0 + timedelta(minutes=cycle),
                    registers={"energy_active_import_total": Decimal("100") + Decimal(cycle) * Decimal("0.37")},
                )
                for meter in ms
            ),
        )
        for cycle in range(4)
        for g, ms in meters.items()
    ]
    billed: list[list[str]] = [[], []]
    async with replica(engine, mqtt_url, 0, billed[0]), replica(engine, mqtt_url, 1, billed[1]):
        publisher = MqttLink(mqtt_url, service="collector", instance=f"pub-{run}")
        publishing = asyncio.create_task(publisher.run())
        try:
            for batch in batches:
                await publisher.publish(topics.readings(batch.gateway_id), batch)
            async with asyncio.timeout(30):
                while len(billed[0]) + len(billed[1]) < len(batches):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more may arrive: each batch is billed once
        finally:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
    for index in (0, 1):
        assert billed[index], "each shard billed some gateways"
        assert all(shard_of(g, 2) == index for g in billed[index])
    assert sorted(billed[0] + billed[1]) == sorted(b.gateway_id for b in batches)
    # Three one-minute steps of 0.37 kWh per meter, priced at 0.613: what one process bills.
    expected = (Decimal("1.11"), Decimal("1.11") * Decimal("0.613"))
    got = await totals(engine, [m for ms in meters.values() for m in ms])
    assert got == {m: expected for ms in meters.values() for m in ms}
