"""Billing throughput: reading batches published to the real broker → ledger committed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomqtt
import httpx
from pydantic import SecretStr

from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.benchkit import emit
from shuidian_devstack.platform import _serve
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

METERS = 2000
BATCH = 500
RUNS = 3


def _batches(run: int, cycles: int) -> list[bytes]:
    """`cycles` readings per meter, each meter's register rising 0.5 kWh a cycle, in batches of BATCH."""
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=run)
    payloads: list[bytes] = []
    readings: list[Reading] = []
    for cycle in range(cycles):
        at = start + timedelta(minutes=cycle)
        for m in range(METERS):
            readings.append(
                Reading.create(
                    f"BM-{m:05d}",
                    Utility.ELECTRICITY,
                    at,
                    registers={"energy_active_import_total": Decimal(1000 + run * 100) + Decimal(cycle) / 2},
                )
            )
            if len(readings) == BATCH:
                payloads.append(
                    ReadingBatch(source="bench", gateway_id=f"bench-{len(payloads) % 300}", readings=tuple(readings))
                    .model_dump_json()
                    .encode()
                )
                readings = []
    return payloads


def _publish(mqtt_url: str, payloads: list[bytes]) -> None:
    """Publisher in its own process, so it does not share the billing process's event loop."""

    async def go() -> None:
        address = BrokerAddress.parse(mqtt_url)
        window = asyncio.Semaphore(100)  # QoS 1 publishes in flight at once

        async def one(client: aiomqtt.Client, payload: bytes) -> None:
            async with window:
                await client.publish(topics.readings("bench"), payload, qos=1)

        async with aiomqtt.Client(address.host, address.port, max_inflight_messages=100, timeout=300) as client:
            await asyncio.gather(*(one(client, p) for p in payloads))

    asyncio.run(go())


async def run(database_url: str, mqtt_url: str) -> None:
    from shuidian_billing.billing import READINGS

    def consumed() -> float:
        return sum(s.value for metric in READINGS.collect() for s in metric.samples if s.name.endswith("_total"))

    port = infra.free_port()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"bench-{port}",
        http_port=port,
    )
    server, task = await _serve(billing_app(settings), port)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await client.put(
                "/v1/tariffs/electricity", json={"unit_price": "0.60", "effective_from": "2020-01-01T00:00:00+08:00"}
            )
            for a in range(METERS // 10):
                await client.put(f"/v1/accounts/BA-{a:05d}", json={"name": f"bench {a}"})
            for m in range(METERS):
                await client.put(
                    f"/v1/meters/BM-{m:05d}/binding", json={"account_id": f"BA-{m // 10:05d}", "utility": "electricity"}
                )
        rates: list[float] = []
        cpu_share: list[float] = []
        cycles = 10
        for run in range(RUNS):
            payloads = _batches(run, cycles)
            total = len(payloads) * BATCH
            before = consumed()
            cpu_before = time.process_time()
            started = time.perf_counter()
            publisher = multiprocessing.get_context("spawn").Process(target=_publish, args=(mqtt_url, payloads))
            publisher.start()
            while consumed() - before < total:
                await asyncio.sleep(0.01)
                if time.perf_counter() - started > 300:
                    raise TimeoutError("billing did not keep up within 300 s")
            elapsed = time.perf_counter() - started
            publisher.join()
            rates.append(total / elapsed)
            cpu_share.append((time.process_time() - cpu_before) / elapsed)
        median = statistics.median(rates)
        emit(
            "billing throughput",
            median,
            "readings/s",
            20000,
            median >= 20000,
            runs=RUNS,
            median=round(median),
            min=round(min(rates)),
            max=round(max(rates)),
            readings_per_run=cycles * METERS,
            batch_size=BATCH,
            meters=METERS,
            path="published to the broker → priced → watermarks, accruals and usage committed (one process)",
            billing_cpu_cores=round(statistics.median(cpu_share), 2),
            cpus=os.cpu_count(),
        )
    finally:
        server.should_exit = True
        await task
