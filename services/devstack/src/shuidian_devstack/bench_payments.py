"""Payments and documents: provider callbacks verified and credited per second, usage-history
query latency for a phone chart over a year of hourly rows, and monthly statement latency.

Run: `python -m shuidian_devstack.bench payments`.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments.online import OnlinePayments, Providers
from shuidian_billing.adapters.statements import statement
from shuidian_billing.adapters.usage import Granularity, usage_history
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.benchkit import emit
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox

TZ = ZoneInfo("Asia/Shanghai")
METERS = 100  # × a year of hours = 876,000 usage rows
CALLBACKS = 300
RUNS = 3


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(database_url: str, mqtt_url: str) -> None:
    engine = create_engine(database_url, pool_size=5)
    await upgrade(engine, "billing", str(files("shuidian_billing") / "migrations"))
    settings = BillingSettings(environment="test")
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="bench"), "billing")
    billing = Billing.build(engine, outbox, settings, "bench")
    online = OnlinePayments(engine, billing, Providers.from_settings(settings))
    assert online.providers.sandbox is not None
    try:
        await _callbacks(billing, online)
        await _usage(engine)
        await _statement(engine, billing)
    finally:
        await engine.dispose()


async def _callbacks(billing: Billing, online: OnlinePayments) -> None:
    sandbox = online.providers.sandbox
    assert sandbox is not None
    rates: list[float] = []
    cpu: list[float] = []
    for run_no in range(RUNS):
        account = f"bench-pay-{run_no}-{uuid.uuid4().hex[:6]}"
        await billing.accounts.put_account(account, "bench", Decimal("20"), Decimal("5"), Decimal("0"))
        orders = [
            (await online.create_order("sandbox", account, Decimal("10.00"), uuid.uuid4().hex))["order_id"]
            for _ in range(CALLBACKS)
        ]
        now = datetime.now(UTC)
        signed = [sandbox.notification(order_id=o, transaction_id=f"SBX{o}", total_fen=1000, now=now) for o in orders]
        started, cpu_started = time.perf_counter(), time.process_time()
        for headers, body in signed:
            await online.notify("sandbox", headers, body, "bench", datetime.now(UTC))
        elapsed = time.perf_counter() - started
        rates.append(CALLBACKS / elapsed)
        cpu.append((time.process_time() - cpu_started) / elapsed)
    median = statistics.median(rates)
    emit(
        "payments_callbacks_credited_per_second",
        median,
        "callbacks/s",
        100,
        median >= 100,
        min=round(min(rates)),
        max=round(max(rates)),
        runs=RUNS,
        callbacks_per_run=CALLBACKS,
        note="sequential: RSA-SHA256 verify + AES-GCM decrypt + idempotent credit + order update + callback log",
        process_cpu_cores=round(statistics.median(cpu), 2),
        cpus=os.cpu_count(),
    )


async def _usage(engine: AsyncEngine) -> None:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=365)
    meters = [f"bench-E-{i:04d}" for i in range(METERS)]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO billing.usage_hourly (meter_id, hour, utility, quantity, cost) "
                "SELECT m, h, 'electricity', 0.25 + (extract(hour FROM h) / 100), (0.25 + (extract(hour FROM h) / 100)) * 0.613 "
                "FROM unnest(CAST(:m AS text[])) AS m, generate_series(CAST(:s AS timestamptz), CAST(:e AS timestamptz), '1 hour') AS h "
                "ON CONFLICT DO NOTHING"
            ),
            {"m": meters, "s": start, "e": end - timedelta(hours=1)},
        )
        await conn.execute(text("ANALYZE billing.usage_hourly"))
    queries: dict[Granularity, timedelta] = {
        "hour": timedelta(hours=48),
        "day": timedelta(days=31),
        "month": timedelta(days=365),
    }
    for granularity, span in queries.items():
        latencies: list[float] = []
        for i in range(200):
            meter = meters[(i * 37) % METERS]
            began = time.perf_counter()
            buckets = await usage_history(engine, meter, granularity, end - span, end, TZ)
            latencies.append((time.perf_counter() - began) * 1000)
            assert buckets
        p99 = _percentile(latencies, 0.99)
        emit(
            f"usage_history_{granularity}_p99_ms",
            p99,
            "ms",
            50,
            p99 < 50,
            p50=round(statistics.median(latencies), 2),
            max=round(max(latencies), 2),
            queries=len(latencies),
            rows_scanned_per_query=int(span / timedelta(hours=1)),
            table_rows=METERS * 365 * 24,
        )


async def _statement(engine: AsyncEngine, billing: Billing) -> None:
    account = f"bench-st-{uuid.uuid4().hex[:6]}"
    await billing.accounts.put_account(account, "bench", Decimal("20"), Decimal("5"), Decimal("0"))
    await billing.credits.top_up(account, Decimal("500.00"), "cash", None, uuid.uuid4().hex)
    purse = store.household(account)
    # A month of hourly consumption postings from two meters, through the ledger's own posting function.
    postings = [
        store.Transaction(
            "consumption",
            [
                store.Entry(purse, Decimal("-0.31"), meter, datetime.now(UTC) - timedelta(hours=h)),
                store.Entry(f"revenue:{utility}", Decimal("0.31"), meter, datetime.now(UTC) - timedelta(hours=h)),
            ],
        )
        for h in range(720)
        for meter, utility in (("bench-st-E", "electricity"), ("bench-st-W", "water"))
    ]
    async with engine.begin() as conn:
        await store.post_many(conn, postings)
        await conn.execute(text("ANALYZE billing.ledger_entries"))
    month = f"{datetime.now(TZ):%Y-%m}"
    latencies: list[float] = []
    for _ in range(20):
        began = time.perf_counter()
        doc = await statement(engine, account, month, TZ)
        latencies.append((time.perf_counter() - began) * 1000)
        assert doc["reconciles"]
    median = statistics.median(latencies)
    emit(
        "statement_month_json_ms",
        median,
        "ms",
        500,
        median < 500,
        min=round(min(latencies), 1),
        max=round(max(latencies), 1),
        ledger_entries_in_month=len(postings) * 2 + 2,
    )
