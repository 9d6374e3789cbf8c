"""Billing throughput and latency: reading batches published to the real broker → ledger committed,
beside the raw database ceiling (batched insert + balance update) measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.synchronize import Event

import aiomqtt
import httpx
import psutil
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.benchkit import emit
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

METERS = 2000
ACCOUNTS = METERS // 10
BATCH = 200  # readings per gateway cycle (a gateway always reports the same meters)
RUNS = 3
CYCLES = 20
WINDOW = 100  # QoS 1 publishes in flight at once
LATENCY_RATE = 5000  # readings/s offered while measuring latency
LATENCY_SECONDS = 8
# BENCH_BILLING_REPLICAS=n (n > 1) also measures n billing processes (`python -m shuidian_billing`,
# BILLING_SHARD_INDEX i of n) sharing the same stream.
REPLICAS = int(os.environ.get("BENCH_BILLING_REPLICAS", "1"))
# Serialised in every payload and replaced by the publish time just before publishing (same length).
PUBLISH_MARK = datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
PUBLISH_MARK_TEXT = b"2000-01-01T00:00:00.000001Z"


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
                gateways = METERS // BATCH
                batch = ReadingBatch(
                    source="bench",
                    gateway_id=f"bench-{len(payloads) % gateways}",
                    readings=tuple(readings),
                    occurred_at=PUBLISH_MARK,
                    # Numbered in each gateway's stream as a collector numbers them (one epoch per run),
                    # so billing's stream bookkeeping is part of what is measured.
                    epoch=f"bench-run-{run}",
                    sequence=len(payloads) // gateways + 1,
                )
                payload = batch.model_dump_json().encode()
                assert PUBLISH_MARK_TEXT in payload
                payloads.append(payload)
                readings = []
    return payloads


def _publish(mqtt_url: str, payloads: list[bytes], rate: float | None, ready: Event, start: Event) -> None:
    """Publisher in its own process; `rate` paces it (readings/s), None publishes as fast as the broker takes.

    It connects, says `ready` and waits for `start`, so process start-up is not part of the measurement.
    """

    async def go() -> None:
        address = BrokerAddress.parse(mqtt_url)
        window = asyncio.Semaphore(WINDOW)

        started = 0.0

        async def one(client: aiomqtt.Client, index: int, payload: bytes) -> None:
            if rate is not None:
                await asyncio.sleep(max(0.0, started + index * BATCH / rate - time.perf_counter()))
            async with window:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
                await client.publish(topics.readings("bench"), payload.replace(PUBLISH_MARK_TEXT, stamp), qos=1)

        async with aiomqtt.Client(address.host, address.port, max_inflight_messages=WINDOW, timeout=300) as client:
            # Publishing far ahead of the acknowledgements is the point here; aiomqtt warns above 10 pending.
            client.pending_calls_threshold = len(payloads) + 1
            ready.set()
            await asyncio.to_thread(start.wait)
            started = time.perf_counter()
            await asyncio.gather(*(one(client, i, p) for i, p in enumerate(payloads)))

    asyncio.run(go())


async def _database_ceiling(database_url: str) -> list[float]:
    """Rows/s of the same shape of work with nothing but the database: batched insert + balance update."""
    engine = create_engine(database_url, pool_size=2)
    rates: list[float] = []
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA IF NOT EXISTS bench"))
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS bench.readings (meter_id text, sampled_at timestamptz, value numeric, "
                    "PRIMARY KEY (meter_id, sampled_at))"
                )
            )
            await conn.execute(
                text("CREATE TABLE IF NOT EXISTS bench.balances (account text PRIMARY KEY, balance numeric NOT NULL)")
            )
        per_transaction = BATCH * 10
        for run in range(RUNS):
            start = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=run)
            total = CYCLES * METERS
            began = time.perf_counter()
            for offset in range(0, total, per_transaction):
                rows = range(offset, min(offset + per_transaction, total))
                async with engine.begin() as conn:
                    await conn.execute(
                        text(
                            "INSERT INTO bench.readings SELECT * FROM unnest(CAST(:m AS text[]), "
                            "CAST(:t AS timestamptz[]), CAST(:v AS numeric[]))"
                        ),
                        {
                            "m": [f"BM-{i % METERS:05d}" for i in rows],
                            "t": [start + timedelta(minutes=i // METERS) for i in rows],
                            "v": [Decimal(i) / 2 for i in rows],
                        },
                    )
                    await conn.execute(
                        text(
                            "INSERT INTO bench.balances SELECT * FROM unnest(CAST(:a AS text[]), CAST(:d AS numeric[])) "
                            "ON CONFLICT (account) DO UPDATE SET balance = bench.balances.balance + EXCLUDED.balance"
                        ),
                        {"a": [f"BA-{a:05d}" for a in range(ACCOUNTS)], "d": [Decimal("-0.30")] * ACCOUNTS},
                    )
            rates.append(total / (time.perf_counter() - began))
    finally:
        await engine.dispose()
    return rates


def _cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by every process with one of these names (the database, the broker)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if process.info["name"] in names and times is not None:
            total += times.user + times.system
    return total


async def _serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Billing's API on `port`, started in this event loop (the bench needs no other service)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("billing stopped during start-up")
        await asyncio.sleep(0.02)
    return server, task


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _committed_of(metrics: str) -> float:
    """billing_readings_committed_total from a replica's /metrics text."""
    for line in metrics.splitlines():
        if line.startswith("billing_readings_committed_total "):
            return float(line.split()[1])
    return 0.0


async def _replicas(database_url: str, mqtt_url: str, count: int) -> None:
    """Throughput of `count` billing processes, each billing its shard of the gateways."""
    ports = [infra.free_port() for _ in range(count)]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shuidian_billing",
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "MQTT_URL": mqtt_url,
                "BILLING_ENVIRONMENT": "test",
                "BILLING_GC_TUNING": "true",
                "BILLING_HTTP_PORT": str(port),
                "BILLING_INSTANCE_ID": f"bench-replica-{index}",
                "BILLING_MQTT_CLEAN_SESSION": "true",
                "BILLING_FLUSH_INTERVAL_SECONDS": "3600",
                "BILLING_LOG_LEVEL": "WARNING",
                "BILLING_SHARD_INDEX": str(index),
                "BILLING_SHARD_COUNT": str(count),
            },
        )
        for index, port in enumerate(ports)
    ]
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def committed() -> float:
                total = 0.0
                for port in ports:
                    total += _committed_of((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
                return total

            for port in ports:
                for _ in range(600):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
                else:
                    raise TimeoutError(f"billing replica on port {port} did not become ready")
            # Accounts and bindings are already in the database (the single-process runs made them).
            watched = [psutil.Process(p.pid) for p in processes]
            rates: list[float] = []
            cpu_per_reading: list[float] = []
            for run in range(RUNS):
                payloads = _batches(RUNS + 1 + run, CYCLES)
                total = len(payloads) * BATCH
                context = multiprocessing.get_context("spawn")
                ready, start = context.Event(), context.Event()
                publisher = context.Process(target=_publish, args=(mqtt_url, payloads, None, ready, start))
                publisher.start()
                if not await asyncio.to_thread(ready.wait, 60):
                    raise TimeoutError("the publisher did not connect")
                before, cpu_before = await committed(), sum(sum(w.cpu_times()[:2]) for w in watched)
                started = time.perf_counter()
                start.set()
                while await committed() - before < total:
                    await asyncio.sleep(0.05)
                    if time.perf_counter() - started > 300:
                        raise TimeoutError("billing replicas did not keep up within 300 s")
                elapsed = time.perf_counter() - started
                cpu = sum(sum(w.cpu_times()[:2]) for w in watched) - cpu_before
                await asyncio.to_thread(publisher.join)
                rates.append(total / elapsed)
                cpu_per_reading.append(cpu / total)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), 30)
    median = statistics.median(rates)
    emit(
        "billing throughput, replicas",
        median,
        "readings/s",
        20000,
        median >= 20000,
        replicas=count,
        runs=RUNS,
        min=round(min(rates)),
        max=round(max(rates)),
        billing_cpu_us_per_reading=round(statistics.median(cpu_per_reading) * 1e6),
        path="as above, billed by BILLING_SHARD_COUNT processes (python -m shuidian_billing) each taking its shard",
        cpus=os.cpu_count(),
    )


async def run(database_url: str, mqtt_url: str) -> None:
    from shuidian_billing.adapters.readings import BATCH_SECONDS, COMMITTED

    logging.getLogger("shuidian_billing").setLevel(logging.WARNING)
    # The outbox relays a burst of balance events at once; aiomqtt warns above 10 pending publishes.
    logging.getLogger("mqtt").setLevel(logging.ERROR)

    def busy() -> float:
        return sum(s.value for metric in BATCH_SECONDS.collect() for s in metric.samples if s.name.endswith("_sum"))

    def transactions() -> float:
        return sum(s.value for metric in BATCH_SECONDS.collect() for s in metric.samples if s.name.endswith("_count"))

    def committed() -> float:
        return sum(s.value for metric in COMMITTED.collect() for s in metric.samples if s.name.endswith("_total"))

    port = infra.free_port()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"bench-{port}",
        http_port=port,
        # The hourly posting is measured on its own below; here it would only interrupt the runs.
        flush_interval_seconds=3600,
        # As a deployed service does (tests turn it off by default).
        gc_tuning=True,
    )
    app = billing_app(settings)
    server, task = await _serve(app, port)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30, auth=infra.service_auth("billing")) as client:
            await client.put(
                "/v1/tariffs/electricity", json={"unit_price": "0.60", "effective_from": "2020-01-01T00:00:00+08:00"}
            )
            for a in range(ACCOUNTS):
                await client.put(f"/v1/accounts/BA-{a:05d}", json={"name": f"bench {a}"})
            for m in range(METERS):
                await client.put(
                    f"/v1/meters/BM-{m:05d}/binding", json={"account_id": f"BA-{m // 10:05d}", "utility": "electricity"}
                )

        # CPU cores used during the throughput runs, per party (the database and broker figures
        # count every process of that name on the machine, so other users' load shows up there).
        others: dict[str, list[float]] = {"postgres": [], "broker": [], "publisher": []}

        async def stream(run: int, payloads: list[bytes], rate: float | None) -> float:
            total = len(payloads) * BATCH
            context = multiprocessing.get_context("spawn")
            ready, start = context.Event(), context.Event()
            publisher = context.Process(target=_publish, args=(mqtt_url, payloads, rate, ready, start))
            publisher.start()
            if not await asyncio.to_thread(ready.wait, 60):
                raise TimeoutError("the publisher did not connect")
            watched = psutil.Process(publisher.pid)
            publisher_before = sum(watched.cpu_times()[:2])
            database_before, broker_before = _cpu_seconds(("postgres",)), _cpu_seconds(("mosquitto",))
            before = committed()
            started = time.perf_counter()
            start.set()
            while committed() - before < total:
                await asyncio.sleep(0.01)
                if time.perf_counter() - started > 300:
                    raise TimeoutError("billing did not keep up within 300 s")
            elapsed = time.perf_counter() - started
            if rate is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    others["publisher"].append((sum(watched.cpu_times()[:2]) - publisher_before) / elapsed)
                others["postgres"].append((_cpu_seconds(("postgres",)) - database_before) / elapsed)
                others["broker"].append((_cpu_seconds(("mosquitto",)) - broker_before) / elapsed)
            await asyncio.to_thread(publisher.join)
            return elapsed

        rates: list[float] = []
        cpu_share: list[float] = []
        busy_share: list[float] = []
        per_transaction: list[float] = []
        for run in range(RUNS):
            payloads = _batches(run, CYCLES)
            cpu_before, busy_before, txns_before = time.process_time(), busy(), transactions()
            elapsed = await stream(run, payloads, None)
            per_transaction.append(len(payloads) * BATCH / max(1.0, transactions() - txns_before))
            rates.append(len(payloads) * BATCH / elapsed)
            cpu_share.append((time.process_time() - cpu_before) / elapsed)
            busy_share.append((busy() - busy_before) / elapsed)
        posting_started = time.perf_counter()
        postings = await app.state.container.billing.poster.flush(before=datetime.now(UTC))
        posting_rate = postings / (time.perf_counter() - posting_started)
        ceiling = await _database_ceiling(database_url)

        latencies: list[float] = []

        def on_commit(batches: Sequence[ReadingBatch]) -> None:
            now = datetime.now(UTC)
            latencies.extend((now - b.occurred_at).total_seconds() for b in batches)

        app.state.container.billing.readings.on_commit = on_commit
        cycles = LATENCY_RATE * LATENCY_SECONDS // METERS
        await stream(RUNS, _batches(RUNS, cycles), LATENCY_RATE)
        app.state.container.billing.readings.on_commit = None

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
            readings_per_run=CYCLES * METERS,
            batch_size=BATCH,
            meters=METERS,
            max_batches_per_transaction=settings.max_batches_per_transaction,
            lanes=settings.lanes,
            path="published to the broker → priced → watermarks, hourly accruals, usage and charge lines committed "
            "(the hourly ledger posting is measured separately)",
            billing_cpu_cores=round(statistics.median(cpu_share), 2),
            billing_cpu_us_per_reading=round(
                statistics.median(c / r for c, r in zip(cpu_share, rates, strict=True)) * 1e6
            ),
            postgres_cpu_cores=round(statistics.median(others["postgres"]), 2),
            broker_cpu_cores=round(statistics.median(others["broker"]), 2),
            publisher_cpu_cores=round(statistics.median(others["publisher"]), 2) if others["publisher"] else None,
            billing_transactions_busy_share=round(statistics.median(busy_share), 2),
            readings_per_transaction=round(statistics.median(per_transaction)),
            database_ceiling_rows_per_s=round(statistics.median(ceiling)),
            share_of_ceiling=round(median / statistics.median(ceiling), 3),
            cpus=os.cpu_count(),
        )
        emit(
            "billing hourly posting",
            posting_rate,
            "meter-hours/s",
            278,
            posting_rate >= 278,
            postings=postings,
            path="closed hours of accruals → one balanced ledger transaction per meter-hour, carries updated",
            target_means="1M meters' hours posted within the hour",
        )
        p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
        emit(
            "billing latency p99",
            p99 * 1000,
            "ms",
            500,
            p99 < 0.5,
            p50_ms=round(p50 * 1000, 1),
            p99_ms=round(p99 * 1000, 1),
            max_ms=round(max(latencies) * 1000, 1),
            offered_readings_per_s=LATENCY_RATE,
            batches=len(latencies),
            path="publish (stamped in occurred_at) → billing transaction committed",
        )
    finally:
        server.should_exit = True
        await task
    if REPLICAS > 1:
        await _replicas(database_url, mqtt_url, REPLICAS)
