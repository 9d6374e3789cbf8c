"""Collector benchmarks against the simulator over real sockets, the real broker and PostgreSQL.

- Bus efficiency: a 2400-baud DL/T 645 bus with 32 meters, polled flat out. Efficiency = the bus time the
  answered exchanges physically need (request + reply at 11 bits per character, plus the meter's reply
  delay) ÷ the wall time of the window, i.e. achieved reads/s ÷ the physical ceiling. Also with one dead meter.
- Command latency on that fully busy bus: trip request published → trip frame on the wire (simulator
  wire log), p99.
- Scale: one collector polling 10,000 meters on 300 simulated gateways at a 60 s cycle (simulator in its
  own process): share of meters read within one cycle, collector CPU and memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import psutil
from pydantic import SecretStr

from shuidian_collector.app import create_app
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack import infra
from shuidian_devstack.benchkit import emit
from shuidian_devstack.platform import _serve
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandRequested, ReadingBatch
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

BITS_PER_CHAR = 11
RUNS = 3
WARMUP_S = 8.0
WINDOW_S = 25.0
COMMANDS = 30


def _estate(tag: str, gateways: int, meters: int, baud: int, *, dead: int | None = None) -> dict[str, Any]:
    return {
        "seed": 11,
        "gateways": [
            {
                "id": f"gw-{tag}-{g}",
                "buses": [
                    {
                        "id": f"bus-{tag}-{g}",
                        "baud": baud,
                        "reply_delay_ms": 20,
                        "meters": [
                            {
                                "id": f"E-{tag}-{g}-{n}",
                                "address": f"{g:04d}{n + 1:08d}",
                                "initial_register": "100",
                                "faults": [{"kind": "offline"}] if n == dead else [],
                            }
                            for n in range(meters)
                        ],
                    }
                ],
            }
            for g in range(gateways)
        ],
    }


def _csv(estate: dict[str, Any], endpoints: dict[str, Any], *, interval: int, timeout_ms: int) -> str:
    lines = [
        "gateway_id,bus_id,host,port,protocol,baud,timeout_ms,retries,meter_id,address,model,utility,poll_interval_s"
    ]
    for gateway in estate["gateways"]:
        for bus in gateway["buses"]:
            end = endpoints[bus["id"]]
            for meter in bus["meters"]:
                lines.append(
                    f"{gateway['id']},{bus['id']},{end['host']},{end['port']},dlt645,{bus['baud']},{timeout_ms},1,"
                    f"{meter['id']},{meter['address']},dlt645-generic,electricity,{interval}"
                )
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def _collector(database_url: str, mqtt_url: str, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    port = infra.free_port()
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"bench-{uuid.uuid4().hex[:6]}",
        mqtt_clean_session=True,
        http_port=port,
        data_dir=data_dir,
        log_level="WARNING",
        database_pool_size=5,
    )
    server, task = await _serve(create_app(settings), port)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120, auth=infra.service_auth("collector")
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


async def _commission(client: httpx.AsyncClient, csv: str) -> None:
    response = await client.post("/v1/registry/import", content=csv, headers={"Content-Type": "text/csv"})
    response.raise_for_status()


async def _decommission(client: httpx.AsyncClient, estate: dict[str, Any]) -> None:
    for gateway in estate["gateways"]:
        await client.delete(f"/v1/gateways/{gateway['id']}")


def _physical_s(request: bytes, reply: bytes, baud: int, reply_delay_s: float) -> float:
    return (len(request) + len(reply)) * BITS_PER_CHAR / baud + reply_delay_s


# The energy read that starts every DL/T 645 poll, as it travels (+33, little-endian): the 0001FF00 block
# (total + 尖峰平谷), or 00010000 alone for a meter without the block.
_ENERGY_DIS = (bytes([0x33, 0x32, 0x34, 0x33]), bytes([0x33, 0x33, 0x34, 0x33]))


def _efficiency(wire: list[tuple[float, str, bytes]], start: float, end: float, baud: int) -> tuple[float, int, int]:
    """Bus time the answered exchanges in [start, end] physically need ÷ (end - start); how many there were, and
    how many of them were meter polls (one energy read each)."""
    busy, answered, polls = 0.0, 0, 0
    for (at, direction, request), (_, next_direction, reply) in itertools.pairwise(wire):
        if direction == "rx" and next_direction == "tx" and start <= at <= end:
            busy += _physical_s(request, reply, baud, 0.020)
            answered += 1
            polls += request[14:18] in _ENERGY_DIS
    return busy / (end - start), answered, polls


async def _bus_run(database_url: str, mqtt_url: str, *, dead: int | None) -> tuple[float, float, float]:
    tag = uuid.uuid4().hex[:6]
    estate = _estate(tag, 1, 32, 2400, dead=dead)
    bus_id = f"bus-{tag}-0"
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as data:
        async with Simulator(Estate.model_validate(estate)) as sim, _collector(database_url, mqtt_url, Path(data)) as c:
            # Every meter due again every 10 s while a sweep of 32 meters takes longer: the bus never idles.
            await _commission(c, _csv(estate, sim.endpoints(), interval=10, timeout_ms=500))
            await asyncio.sleep(WARMUP_S)
            start = time.time()
            await asyncio.sleep(WINDOW_S)
            end = time.time()
            efficiency, answered, polls = _efficiency(sim.wire_log(bus_id), start, end, 2400)
            await _decommission(c, estate)
    return efficiency, answered / (end - start), polls / (end - start)


async def _command_latencies(database_url: str, mqtt_url: str) -> list[float]:
    tag = uuid.uuid4().hex[:6]
    estate = _estate(tag, 1, 32, 2400)
    bus_id = f"bus-{tag}-0"
    address = BrokerAddress.parse(mqtt_url)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as data:
        async with (
            Simulator(Estate.model_validate(estate)) as sim,
            _collector(database_url, mqtt_url, Path(data)) as c,
            aiomqtt.Client(address.host, address.port) as mqtt,
        ):
            await _commission(c, _csv(estate, sim.endpoints(), interval=10, timeout_ms=500))
            await asyncio.sleep(WARMUP_S)
            for i in range(COMMANDS):
                meter = estate["gateways"][0]["buses"][0]["meters"][i % 32]
                kind = CommandKind.TRIP if (i // 32) % 2 == 0 else CommandKind.DIRECT_CLOSE
                request = CommandRequested(
                    source="bench",
                    command_id=uuid.uuid4(),
                    meter_id=meter["id"],
                    kind=kind,
                    expires_at=datetime.now(UTC) + timedelta(minutes=5),
                    origin=CommandOrigin.OPERATOR,
                    reason="bench",
                )
                sent = len(sim.wire_log(bus_id))
                published = time.time()
                await mqtt.publish(topics.meter_command(meter["id"]), request.model_dump_json().encode(), qos=1)
                async with asyncio.timeout(10):
                    while True:
                        frames = [(at, f) for at, d, f in sim.wire_log(bus_id)[sent:] if d == "rx" and f[12] == 0x1C]
                        if frames:
                            latencies.append(frames[0][0] - published)
                            break
                        await asyncio.sleep(0.005)
                await asyncio.sleep(1.0)  # let the read-back finish; polls keep the bus full meanwhile
            await _decommission(c, estate)
    return latencies


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def _scale(database_url: str, mqtt_url: str) -> None:
    gateways, total = 300, 10_000
    tag = uuid.uuid4().hex[:6]
    per = [total // gateways + (1 if g < total % gateways else 0) for g in range(gateways)]
    estate = _estate(tag, gateways, max(per), 9600)
    for gateway, count in zip(estate["gateways"], per, strict=True):
        gateway["buses"][0]["meters"] = gateway["buses"][0]["meters"][:count]
    with tempfile.TemporaryDirectory(prefix="bench-collector-scale-") as tmp:
        estate_path, ports_path = Path(tmp) / "estate.json", Path(tmp) / "ports.json"
        estate_path.write_text(json.dumps(estate))
        sim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shuidian_simulator",
            "--estate",
            str(estate_path),
            "--control-port",
            str(infra.free_port()),
            "--ports-file",
            str(ports_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(60):
                while not ports_path.exists() or not ports_path.read_text():
                    await asyncio.sleep(0.2)
            endpoints = json.loads(ports_path.read_text())
            address = BrokerAddress.parse(mqtt_url)
            seen: dict[str, float] = {}
            async with (
                _collector(database_url, mqtt_url, Path(tmp) / "data") as c,
                aiomqtt.Client(address.host, address.port) as mqtt,
            ):
                await mqtt.subscribe(topics.ALL_READINGS, qos=0)

                async def listen() -> None:
                    async for message in mqtt.messages:
                        assert isinstance(message.payload, bytes)
                        batch = ReadingBatch.model_validate_json(message.payload)
                        for reading in batch.readings:
                            seen[reading.meter_id] = time.time()

                listener = asyncio.create_task(listen())
                await _commission(c, _csv(estate, endpoints, interval=60, timeout_ms=500))
                # The first cycle also announces every meter's state once; measure the second cycle on.
                await asyncio.sleep(75)
                process = psutil.Process(os.getpid())
                cpu_before = sum(process.cpu_times()[:2])
                start = time.time()
                await asyncio.sleep(60)
                end = time.time()
                cpu = (sum(process.cpu_times()[:2]) - cpu_before) / (end - start)
                rss_mb = process.memory_info().rss / 2**20
                read = sum(1 for at in seen.values() if start <= at <= end)
                listener.cancel()
                await _decommission(c, estate)
        finally:
            sim.terminate()
            await asyncio.wait_for(sim.wait(), 10)
    share = read / total
    emit(
        "collector_scale_meters_read_per_cycle",
        share,
        "ratio",
        0.99,
        share >= 0.99,
        meters=total,
        gateways=gateways,
        cycle_s=60,
        collector_cpu_share_of_one_core=round(cpu, 3),
        collector_rss_mb=round(rss_mb, 1),
        cpus=os.cpu_count(),
    )


async def run(database_url: str, mqtt_url: str) -> None:
    for dead, name, target in (
        (None, "collector_bus_efficiency", 0.90),
        (5, "collector_bus_efficiency_one_dead_meter", 0.85),
    ):
        runs = [await _bus_run(database_url, mqtt_url, dead=dead) for _ in range(RUNS)]
        ratios = [r[0] for r in runs]
        median = statistics.median(ratios)
        emit(
            name,
            median,
            "ratio",
            target,
            median >= target,
            runs=RUNS,
            min=round(min(ratios), 3),
            max=round(max(ratios), 3),
            exchanges_per_s=round(statistics.median(r[1] for r in runs), 2),
            meter_polls_per_s=round(statistics.median(r[2] for r in runs), 2),
            poll="0001FF00 block (total + 4 tariffs), status word 3, remaining money",
            baud=2400,
            meters=32,
            window_s=WINDOW_S,
            cpus=os.cpu_count(),
        )
    latencies = await _command_latencies(database_url, mqtt_url)
    p99 = _p99(latencies)
    emit(
        "collector_command_latency_p99",
        p99,
        "s",
        1.0,
        p99 < 1.0,
        commands=len(latencies),
        median=round(statistics.median(latencies), 3),
        min=round(min(latencies), 3),
        max=round(max(latencies), 3),
        bus="2400 baud, 32 meters, polled flat out",
        cpus=os.cpu_count(),
    )
    await _scale(database_url, mqtt_url)
