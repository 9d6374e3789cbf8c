"""Alarm evaluation throughput: reading batches through the service's evaluation path (targets → rules →
pure detectors → rule state persisted and alarms applied, one transaction per batch), readings per second.

Each evaluator runs in a process of its own, tuned as a service is once started (the kit's `tune_gc`), so the
figure is the service's and nothing leaks into the other benchmarks. Measured with one process and with two
replicas: the second figure is the `$share/alarm` group with two instances, each gateway's batches going to
one of them (a hash-by-topic shared subscription; with plain round robin each meter's cached state would
be re-read whenever its gateway's batches switch replica).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from typing import Any

import httpx
from sqlalchemy import text

from shuidian_alarm.adapters import targets
from shuidian_alarm.app import compose
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.benchkit import emit
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_kit.service import tune_gc
from shuidian_shared.messages import Reading, ReadingBatch, RelayState, Utility

METERS = 2000
PER_GATEWAY = 500  # one batch per gateway poll cycle
GATEWAYS = METERS // PER_GATEWAY
CYCLES = 10
RUNS = 3
TARGET = 20_000  # the billing pipeline's target rate: alarm must keep up with it
REPLICAS = (1, 2)


# Register sets: what the DL/T 645 driver publishes today, and the full electrical set of the Modbus profiles.
REGISTER_SETS = {
    "dlt645": {"energy_active_import_total": Decimal(1000), "balance_money": Decimal("88.20")},
    "full": {
        "energy_active_import_total": Decimal(1000),
        "voltage_a": Decimal("221.3"),
        "current_a": Decimal("4.210"),
        "power_active": Decimal("0.9312"),
        "power_factor": Decimal("0.962"),
        "frequency": Decimal("50.01"),
        "balance_money": Decimal("88.20"),
    },
}


def _batches(start: datetime, cycles: int, registers: dict[str, Decimal], gateways: list[int]) -> list[ReadingBatch]:
    """Each meter of `gateways` read once a minute, its energy register rising 0.1 kWh a cycle."""
    batches = []
    for cycle in range(cycles):
        at = start + timedelta(minutes=cycle)
        for gateway in gateways:
            first = gateway * PER_GATEWAY
            readings = tuple(
                Reading.create(
                    f"AM-{m:05d}",
                    Utility.ELECTRICITY,
                    at,
                    registers={**registers, "energy_active_import_total": Decimal(1000) + Decimal(cycle) / 10},
                    relay=RelayState.CLOSED,
                )
                for m in range(first, first + PER_GATEWAY)
            )
            batches.append(ReadingBatch(source="bench", gateway_id=f"AG-{gateway}", readings=readings))
    return batches


def _reading(box: list[datetime]) -> Callable[[], datetime]:
    """A clock showing whatever instant the benchmark put in `box` (the batch being evaluated)."""
    return lambda: box[0]


async def _worker(
    database_url: str, mqtt_url: str, registers: dict[str, Decimal], gateways: list[int], start: datetime
) -> None:
    """One evaluator process: warm up, then one run per `go` line on stdin, each reported as a JSON line."""
    engine = create_engine(database_url, pool_size=2)
    # Nothing is published here: the figure is evaluation, not the broker (billing's benchmark measures that).
    mqtt = MqttLink(mqtt_url, service="alarm", instance=f"bench-{gateways[0]}", clean_session=True)
    clock_now = [start]
    try:
        async with httpx.AsyncClient() as http:
            settings = AlarmSettings(environment="test")
            c = compose(
                settings,
                engine,
                Outbox(engine, mqtt, "alarm"),
                mqtt,
                http,
                clock=_reading(clock_now),
            )
            await c.rulebook.load()
            # One warm-up pass creates every meter's state row, as a service that has been running would have.
            for batch in _batches(start, 1, registers, gateways):
                await c.evaluator.on_readings(batch, "")
            tune_gc(settings.gc_young_threshold)
            for run_no in range(RUNS):
                batches = _batches(start + timedelta(minutes=1 + run_no * CYCLES), CYCLES, registers, gateways)
                print("ready", flush=True)
                sys.stdin.readline()
                cpu_before, started = time.process_time(), time.monotonic()
                for batch in batches:
                    clock_now[0] = batch.readings[0].sampled_at
                    await c.evaluator.on_readings(batch, "")
                ended = time.monotonic()
                report = {
                    "readings": sum(len(b.readings) for b in batches),
                    "started": started,
                    "ended": ended,
                    "cpu": time.process_time() - cpu_before,
                }
                print(json.dumps(report), flush=True)
    finally:
        await engine.dispose()


async def _measure(database_url: str, mqtt_url: str, name: str, replicas: int, start: datetime) -> dict[str, float]:
    """Start `replicas` worker processes on disjoint gateways and time each run across all of them."""
    workers = []
    for replica in range(replicas):
        spec = {"set": name, "gateways": list(range(replica, GATEWAYS, replicas)), "start": start.isoformat()}
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shuidian_devstack.bench_alarm",
                database_url,
                mqtt_url,
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    rates: list[float] = []
    cores: list[float] = []
    per_cpu_second: list[float] = []
    try:
        for _ in range(RUNS):
            for w in workers:
                assert w.stdout is not None
                line = await w.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"alarm bench worker failed before a run: {line!r}")
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(b"go\n")
                await w.stdin.drain()
            reports: list[dict[str, Any]] = []
            for w in workers:
                assert w.stdout is not None
                reports.append(json.loads(await w.stdout.readline()))
            total = sum(r["readings"] for r in reports)
            elapsed = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
            cpu = sum(r["cpu"] for r in reports)
            rates.append(total / elapsed)
            cores.append(cpu / elapsed)
            per_cpu_second.append(total / cpu)
    finally:
        for w in workers:
            if w.returncode is None and w.stdin is not None:
                w.stdin.close()
            await w.wait()
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "cores": statistics.median(cores),
        "per_cpu_second": statistics.median(per_cpu_second),
    }


async def run(database_url: str, mqtt_url: str) -> None:
    engine = create_engine(database_url, pool_size=2)
    await upgrade(engine, "alarm", str(files("shuidian_alarm") / "migrations"))
    try:
        async with engine.begin() as conn:
            await targets.upsert(
                conn,
                [
                    Target(
                        meter_id=f"AM-{m:05d}",
                        gateway_id=f"AG-{m // PER_GATEWAY}",
                        account_id=f"AA-{m:05d}",
                        model="acrel-ddsy1352",
                        estate=f"estate-{m % 4}",
                        building=f"building-{m % 40}",
                        room=f"{m:05d}",
                    )
                    for m in range(METERS)
                ],
            )
        configurations = [(name, replicas) for name in REGISTER_SETS for replicas in REPLICAS]
        for number, (name, replicas) in enumerate(configurations):
            # Each configuration on a fresh stretch of time, its meters starting from clean states.
            start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(
                hours=2 * (len(configurations) - number)
            )
            async with engine.begin() as conn:
                await conn.execute(text("TRUNCATE alarm.rule_states"))
            figures = await _measure(database_url, mqtt_url, name, replicas, start)
            async with engine.connect() as conn:
                alarms = (await conn.execute(text("SELECT count(*) FROM alarm.alarms"))).scalar_one()
                row_bytes = (
                    await conn.execute(text("SELECT avg(pg_column_size(states)) FROM alarm.rule_states"))
                ).scalar_one()
            median = figures["median"]
            emit(
                f"alarm evaluation throughput ({name} registers, {replicas} {'process' if replicas == 1 else 'replicas'})",
                median,
                "readings/s",
                TARGET,
                median >= TARGET,
                runs=RUNS,
                median=round(median),
                min=round(figures["min"]),
                max=round(figures["max"]),
                replicas=replicas,
                registers=sorted(REGISTER_SETS[name]),
                readings_per_run=CYCLES * METERS,
                batch_size=PER_GATEWAY,
                meters=METERS,
                alarms_raised=alarms,
                path="batch → targets → rules → detectors → rule state upserted + alarms applied, one transaction per batch",
                dispatch="one process" if replicas == 1 else "each gateway's batches to one replica (hash by topic)",
                alarm_cpu_cores=round(figures["cores"], 2),
                # Readings per second of the alarm processes' own CPU: steadier than wall time on a shared box.
                readings_per_cpu_second=round(figures["per_cpu_second"]),
                alarm_cpu_us_per_reading=round(1e6 / figures["per_cpu_second"], 1),
                # What PostgreSQL rewrites per reading: each meter's rule-state row (JSON text, as stored).
                state_row_bytes=round(row_bytes or 0),
                load_average=round(os.getloadavg()[0], 2),
                cpus=os.cpu_count(),
            )
    finally:
        await engine.dispose()


if __name__ == "__main__":  # a worker process started by `_measure`
    _url, _mqtt, _spec = sys.argv[1:4]
    _parsed = json.loads(_spec)
    asyncio.run(
        _worker(
            _url, _mqtt, REGISTER_SETS[_parsed["set"]], _parsed["gateways"], datetime.fromisoformat(_parsed["start"])
        )
    )
