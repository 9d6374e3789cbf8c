"""Control latency: balance exhausted (BalanceEvent published) → trip confirmed by the simulated DL/T 645 meter.

The whole platform runs in this process against simulated 2400-baud buses that are kept busy by polling
(about 90 % of each bus's time goes to polls, so commands always compete with them). Billing's
exhaustion events arrive spread over time across all meters; the latency of each is measured up to control's
CommandUpdate `confirmed`, which control publishes after the collector read the open relay back from the meter.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import statistics
import time
import uuid
from decimal import Decimal

import aiomqtt
import httpx

from shuidian_devstack.benchkit import emit
from shuidian_devstack.platform import platform
from shuidian_devstack.seed import AccountSeed, BusSeed, MeterSeed, seed
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandUpdate,
    MeterRef,
    Utility,
)
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

GATEWAYS = 5
BUSES_PER_GATEWAY = 2
METERS_PER_BUS = 20
BAUD = 2400
# A poll is two exchanges (energy, status word) of ~0.37 s together at 2400 baud: 20 meters every 8 s keep a bus
# about 90 % busy with polls, as the collector is meant to run it; commands jump the poll queue.
POLL_INTERVAL_S = 8
TRIPS_PER_RUN = 60  # a random sample of the meters, exhausted one after the other
EVENTS_PER_SECOND = 2.0  # exhaustions across the estate (0.2 per bus per second: far above a real estate's rate)
RESTORES_PER_SECOND = 10.0  # restorations between runs (not measured)
RUNS = 3
TARGET_P99_S = 2.0
CONTROL = {
    # The bench measures the device path at any hour: no protected windows.
    "nights_start": None,
    "nights_end": None,
    "protect_weekends": False,
    "protect_holidays": False,
    "tick_seconds": 0.5,
}


def _meters() -> list[tuple[str, str, str, str]]:
    """(gateway, bus, meter id, address) for every simulated meter."""
    out = []
    for g in range(GATEWAYS):
        for b in range(BUSES_PER_GATEWAY):
            bus = f"cb-{g}-{b}"
            for m in range(METERS_PER_BUS):
                n = (g * BUSES_PER_GATEWAY + b) * METERS_PER_BUS + m
                out.append((f"cg-{g}", bus, f"CM-{n:04d}", f"{n + 1:012d}"))
    return out


def _estate(meters: list[tuple[str, str, str, str]]) -> Estate:
    gateways: dict[str, dict[str, list[dict[str, str]]]] = {}
    for gateway, bus, meter_id, address in meters:
        gateways.setdefault(gateway, {}).setdefault(bus, []).append(
            {
                "id": meter_id,
                "address": address,
                "model": "dlt645-generic",
                "utility": "electricity",
                "profile": "residential",
                "initial_register": "100.00",
            }
        )
    return Estate.model_validate(
        {
            "seed": 3,
            "gateways": [
                {
                    "id": gateway,
                    "buses": [
                        {"id": bus, "port": 0, "protocol": "dlt645", "baud": BAUD, "reply_delay_ms": 20, "meters": ms}
                        for bus, ms in buses.items()
                    ],
                }
                for gateway, buses in gateways.items()
            ],
        }
    )


def _confirmed_at(
    by_meter: dict[str, list[tuple[CommandKind, uuid.UUID, float]]],
    seen_before: dict[str, int],
    meter_id: str,
    wanted: CommandKind,
) -> float | None:
    """When the first `wanted` command for the meter since this round started was confirmed."""
    news = by_meter.get(meter_id, [])[seen_before[meter_id] :]
    return next((at for kind, _, at in news if kind is wanted), None)


async def _all_online(client: httpx.AsyncClient, control: str, meter_ids: list[str], timeout: float = 120.0) -> None:
    """Wait until control has seen every meter online (the collector polled each once after commissioning)."""
    pending = set(meter_ids)
    deadline = time.perf_counter() + timeout
    while pending:
        for meter_id in sorted(pending):
            response = await client.get(f"{control}/v1/meters/{meter_id}/shadow")
            if response.status_code == 200 and response.json()["online"]:
                pending.discard(meter_id)
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(pending)} meter(s) never came online")
        await asyncio.sleep(0.5)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(database_url: str, mqtt_url: str) -> None:
    meters = _meters()
    tag = uuid.uuid4().hex[:6]
    address = BrokerAddress.parse(mqtt_url)
    async with (
        Simulator(_estate(meters)) as sim,
        platform(database_url, mqtt_url, instance=f"bench-{tag}", overrides={"control": CONTROL}) as p,
        aiomqtt.Client(address.host, address.port, identifier=f"bench-billing-{tag}", max_inflight_messages=100) as bus,
    ):
        buses = sorted({b for _, b, _, _ in meters})
        seeds = []
        for bus_id in buses:
            host, port = sim.bus_endpoint(bus_id)
            gateway = next(g for g, b, _, _ in meters if b == bus_id)
            bus_meters = tuple(
                MeterSeed(m, a, "dlt645-generic", "electricity", f"CA-{m}", poll_interval_s=POLL_INTERVAL_S)
                for _, b, m, a in meters
                if b == bus_id
            )
            seeds.append(BusSeed(bus_id, gateway, host, port, "dlt645", BAUD, bus_meters))
        accounts = [AccountSeed(f"CA-{m}", "bench household", Decimal("1000.00")) for _, _, m, _ in meters]
        await seed(p.internal, p.urls, seeds, accounts)

        by_meter: dict[str, list[tuple[CommandKind, uuid.UUID, float]]] = {}
        sent_at: dict[uuid.UUID, tuple[str, float]] = {}
        await bus.subscribe(topics.ALL_COMMAND_UPDATES, qos=1)

        async def listen() -> None:
            async for message in bus.messages:
                assert isinstance(message.payload, bytes)
                update = CommandUpdate.model_validate_json(message.payload)
                now = time.perf_counter()
                if update.state.value == "confirmed":
                    by_meter.setdefault(update.meter_id, []).append((update.kind, update.command_id, now))
                elif update.state.value == "sent" and update.attempt == 1:
                    sent_at[update.command_id] = (update.meter_id, now)

        listener = asyncio.create_task(listen())
        await _all_online(p.internal, p.urls["control"], [m for _, _, m, _ in meters])
        p50s: list[float] = []
        p99s: list[float] = []
        control_p99s: list[float] = []
        cpu: list[float] = []
        rng = random.Random(5)
        try:
            for run_no in range(RUNS):
                tripped = rng.sample([m for _, _, m, _ in meters], TRIPS_PER_RUN)
                for kind in (BalanceEventKind.EXHAUSTED, BalanceEventKind.RESTORED):
                    order = list(tripped)
                    rate = EVENTS_PER_SECOND if kind is BalanceEventKind.EXHAUSTED else RESTORES_PER_SECOND
                    started_at: dict[str, float] = {}
                    wanted = CommandKind.TRIP if kind is BalanceEventKind.EXHAUSTED else CommandKind.DIRECT_CLOSE
                    seen_before = {m: len(by_meter.get(m, [])) for m in order}
                    cpu_before, wall_before = time.process_time(), time.perf_counter()
                    for i, meter_id in enumerate(order):
                        event = BalanceEvent(
                            source="bench-billing",
                            account_id=f"CA-{meter_id}",
                            kind=kind,
                            level=BalanceLevel.EXHAUSTED if kind is BalanceEventKind.EXHAUSTED else BalanceLevel.OK,
                            balance=Decimal("-0.10") if kind is BalanceEventKind.EXHAUSTED else Decimal("50.00"),
                            sequence=1_000_000 + run_no * 2 + (kind is BalanceEventKind.RESTORED),
                            meters=(MeterRef(meter_id=meter_id, utility=Utility.ELECTRICITY),),
                        )
                        target = wall_before + i / rate
                        await asyncio.sleep(max(0.0, target - time.perf_counter()))
                        started_at[meter_id] = time.perf_counter()
                        await bus.publish(topics.balance(event.account_id), event.model_dump_json().encode(), qos=1)
                    done = functools.partial(_confirmed_at, by_meter, seen_before, wanted=wanted)

                    deadline = time.perf_counter() + 120
                    while any(done(m) is None for m in order):
                        if time.perf_counter() > deadline:
                            missing = sum(done(m) is None for m in order)
                            raise TimeoutError(f"{missing} {wanted.value} command(s) not confirmed within 120 s")
                        await asyncio.sleep(0.05)
                    if kind is BalanceEventKind.EXHAUSTED:
                        latencies = [(done(m) or 0.0) - started_at[m] for m in order]
                        # Control's own share: event published → the trip's first attempt handed to the collector.
                        first_sent = {m: at for m, at in sent_at.values() if m in started_at and at >= started_at[m]}
                        control_p99s.append(_percentile([first_sent[m] - started_at[m] for m in order], 0.99))
                        p50s.append(statistics.median(latencies))
                        p99s.append(_percentile(latencies, 0.99))
                        cpu.append((time.process_time() - cpu_before) / (time.perf_counter() - wall_before))
                        if not all(sim.meter(m).relay_open for m in order):
                            raise AssertionError("a confirmed trip left a simulated relay closed")
        finally:
            listener.cancel()
        p99 = statistics.median(p99s)
        emit(
            "control exhausted→trip confirmed p99",
            p99,
            "s",
            TARGET_P99_S,
            p99 < TARGET_P99_S,
            runs=RUNS,
            p50_median=round(statistics.median(p50s), 3),
            p99_min=round(min(p99s), 3),
            p99_max=round(max(p99s), 3),
            control_share_p99=round(statistics.median(control_p99s), 3),
            trips_per_run=TRIPS_PER_RUN,
            meters=len(meters),
            buses=len(buses),
            baud=BAUD,
            poll_interval_s=POLL_INTERVAL_S,
            events_per_second=EVENTS_PER_SECOND,
            path="BalanceEvent published → control → collector → DL/T 645 1C on the wire → read-back → CommandUpdate",
            platform_cpu_cores=round(statistics.median(cpu), 2),
            cpus=os.cpu_count(),
        )
