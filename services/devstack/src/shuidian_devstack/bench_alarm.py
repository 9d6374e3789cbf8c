"""Alarm evaluation throughput: reading batches through the service's evaluation path (targets → rules →
pure detectors → rule state persisted and alarms applied, one transaction per batch), readings per second."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files

import httpx
from sqlalchemy import text

from shuidian_alarm.app import Components, compose
from shuidian_alarm.settings import AlarmSettings
from shuidian_alarm.targets import Target
from shuidian_devstack.benchkit import emit
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import Reading, ReadingBatch, RelayState, Utility

METERS = 2000
PER_GATEWAY = 500  # one batch per gateway poll cycle
CYCLES = 5
RUNS = 3
TARGET = 20_000  # the billing pipeline's target rate: alarm must keep up with it


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


def _batches(start: datetime, cycles: int, registers: dict[str, Decimal]) -> list[ReadingBatch]:
    """Each meter read once a minute, its energy register rising 0.1 kWh a cycle."""
    batches = []
    for cycle in range(cycles):
        at = start + timedelta(minutes=cycle)
        for first in range(0, METERS, PER_GATEWAY):
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
            batches.append(ReadingBatch(source="bench", gateway_id=f"AG-{first // PER_GATEWAY}", readings=readings))
    return batches


def _reading(box: list[datetime]) -> Callable[[], datetime]:
    """A clock showing whatever instant the benchmark put in `box` (the batch being evaluated)."""
    return lambda: box[0]


async def _measure(
    c: Components, clock_now: list[datetime], start: datetime, registers: dict[str, Decimal]
) -> dict[str, float]:
    # One warm-up pass creates every meter's state row, as a service that has been running would have.
    for batch in _batches(start, 1, registers):
        await c.evaluator.on_readings(batch, "")
    rates: list[float] = []
    cpu_share: list[float] = []
    per_cpu_second: list[float] = []
    for run_no in range(RUNS):
        batches = _batches(start + timedelta(minutes=1 + run_no * CYCLES), CYCLES, registers)
        total = sum(len(b.readings) for b in batches)
        cpu_before, started = time.process_time(), time.perf_counter()
        for batch in batches:
            clock_now[0] = batch.readings[0].sampled_at
            await c.evaluator.on_readings(batch, "")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        rates.append(total / elapsed)
        cpu_share.append(cpu / elapsed)
        per_cpu_second.append(total / cpu)
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "cpu_share": statistics.median(cpu_share),
        "per_cpu_second": statistics.median(per_cpu_second),
    }


async def run(database_url: str, mqtt_url: str) -> None:
    engine = create_engine(database_url, pool_size=5)
    await upgrade(engine, "alarm", str(files("shuidian_alarm") / "migrations"))
    # Nothing is published here: the figure is evaluation, not the broker (billing's benchmark measures that).
    mqtt = MqttLink(mqtt_url, service="alarm", instance="bench", clean_session=True)
    try:
        async with httpx.AsyncClient() as http:
            for set_no, (name, registers) in enumerate(REGISTER_SETS.items()):
                # Each register set on a fresh stretch of time, so its meters start from clean states.
                start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=4 - 2 * set_no)
                clock_now = [start]
                c = compose(
                    AlarmSettings(environment="test"),
                    engine,
                    Outbox(engine, mqtt, "alarm"),
                    mqtt,
                    http,
                    clock=_reading(clock_now),
                )
                await c.rulebook.load()
                await c.evaluator.put_targets(
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
                    ]
                )
                async with engine.begin() as conn:
                    await conn.execute(text("TRUNCATE alarm.rule_states"))
                figures = await _measure(c, clock_now, start, registers)
                async with engine.connect() as conn:
                    alarms = (await conn.execute(text("SELECT count(*) FROM alarm.alarms"))).scalar_one()
                median = figures["median"]
                emit(
                    f"alarm evaluation throughput ({name} registers)",
                    median,
                    "readings/s",
                    TARGET,
                    median >= TARGET,
                    runs=RUNS,
                    median=round(median),
                    min=round(figures["min"]),
                    max=round(figures["max"]),
                    registers=sorted(registers),
                    readings_per_run=CYCLES * METERS,
                    batch_size=PER_GATEWAY,
                    meters=METERS,
                    alarms_raised=alarms,
                    path="batch → targets → rules → detectors → rule state upserted + alarms applied, one transaction per batch",
                    alarm_cpu_cores=round(figures["cpu_share"], 2),
                    # Readings per second of the alarm process's own CPU: steadier than wall time on a shared box.
                    readings_per_cpu_second=round(figures["per_cpu_second"]),
                    load_average=round(os.getloadavg()[0], 2),
                    cpus=os.cpu_count(),
                )
    finally:
        await engine.dispose()
