"""Simulator scale: a generated estate of 300 gateways / 10,000 meters in its own process, polled by a
load generator in another process; reports the simulator process's CPU (cores = CPU seconds per wall
second) and RSS, median of 3 runs per load.

Two loads: `minute` polls every meter once per 60 s (what a collector does), measured over a window;
`full` polls every bus back to back, as fast as its emulated line allows, which is the most the
simulator can ever be asked for. The ceiling is the sum over buses of 1 / (transaction line time).

The load generator: `python -m shuidian_devstack.bench_simulator load ESTATE PORTS MODE SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

from shuidian_devstack import infra
from shuidian_devstack.benchkit import emit
from shuidian_protocols import cjt188, dlt645
from shuidian_simulator.adapters.modbus_device import rtu_frame, silent_interval
from shuidian_simulator.estate import BusSpec, Estate, GatewaySpec, MeterSpec, Profile, Protocol

GATEWAYS = 300
METERS = 10_000
RUNS = 3
WINDOW_S = {"minute": 30.0, "full": 10.0}
POLL_INTERVAL_S = 60.0
TIMEOUT_S = 1.0
# One bus per gateway; the protocol mix of a mixed estate (by gateway index modulo 10).
MIX = (Protocol.DLT645,) * 6 + (Protocol.CJT188,) * 2 + (Protocol.MODBUS_RTU, Protocol.MODBUS_TCP)
MODBUS_READ = bytes([3, 0, 0, 0, 17])  # the whole DDSY1352 / ADF400L block: 17 holding registers


def bench_estate() -> Estate:
    gateways = []
    meter_no = 0
    for g in range(GATEWAYS):
        protocol = MIX[g % len(MIX)]
        count = METERS // GATEWAYS + (1 if g < METERS % GATEWAYS else 0)
        meters = []
        for i in range(count):
            meter_no += 1
            if protocol is Protocol.CJT188:
                spec = MeterSpec(id=f"W-{meter_no:05d}", address=f"{meter_no:014d}", utility="water")
            elif protocol is Protocol.DLT645:
                spec = MeterSpec(
                    id=f"E-{meter_no:05d}",
                    address=f"{meter_no:012d}",
                    profile=Profile.OFFICE if i % 7 == 0 else Profile.RESIDENTIAL,
                    prepaid_money=Decimal(200),
                )
            else:
                model = "acrel-ddsy1352" if protocol is Protocol.MODBUS_RTU else "acrel-adf400l"
                spec = MeterSpec(id=f"E-{meter_no:05d}", address=str(i + 1), model=model)
            meters.append(spec)
        baud = 2400 if protocol is Protocol.CJT188 else 9600
        bus = BusSpec(id=f"bus-{g:03d}", protocol=protocol, baud=baud, meters=tuple(meters))
        gateways.append(GatewaySpec(id=f"gw-{g:03d}", buses=(bus,)))
    return Estate(seed=7, acceleration=Decimal(60), truth_limit=50, wire_log_limit=0, gateways=tuple(gateways))


def request_for(protocol: Protocol, meter: MeterSpec) -> bytes:
    if protocol is Protocol.DLT645:
        return dlt645.read_request(meter.address, 0x00010000)
    if protocol is Protocol.CJT188:
        return cjt188.read_request(meter.address)
    frame = rtu_frame(int(meter.address), MODBUS_READ)
    if protocol is Protocol.MODBUS_TCP:
        return b"\0\1\0\0" + (len(MODBUS_READ) + 1).to_bytes(2, "big") + frame[:-2]
    return frame


def line_seconds(bus: BusSpec) -> float:
    """Line time of one transaction (request, reply delay, reply) on this bus: the physical ceiling."""
    char = 11 / bus.baud
    sizes = {Protocol.DLT645: (20, 24), Protocol.CJT188: (18, 37)}
    request, reply = sizes.get(bus.protocol, (8, 5 + 34))
    gaps = 2 * silent_interval(bus.baud) if bus.protocol in (Protocol.MODBUS_RTU, Protocol.MODBUS_TCP) else 0
    return (request + reply) * char + gaps + bus.reply_delay_ms / 1000


# ---------------------------------------------------------------- load generator (its own process)


async def _poll_bus(bus: BusSpec, endpoint: dict[str, Any], mode: str, until: float, counts: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(endpoint["host"], endpoint["port"])
    requests = [request_for(bus.protocol, m) for m in bus.meters]
    pace = POLL_INTERVAL_S / len(requests) if mode == "minute" else 0.0
    parser: dlt645.StreamParser | cjt188.StreamParser | None = None
    if bus.protocol is Protocol.DLT645:
        parser = dlt645.StreamParser()
    elif bus.protocol is Protocol.CJT188:
        parser = cjt188.StreamParser()
    reply_size = 5 + 34 if bus.protocol is Protocol.MODBUS_RTU else 9 + 34
    # Spread the first polls over the pace so that buses do not all start in step.
    index = hash(bus.id) % len(requests)
    next_at = time.monotonic() + (hash(bus.id) % 1000) / 1000 * pace
    try:
        while time.monotonic() < until:
            if pace:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += pace
            writer.write(requests[index % len(requests)])
            index += 1
            await writer.drain()
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    if parser is None:
                        await reader.readexactly(reply_size)
                    else:
                        while not parser.feed(await reader.read(4096)):
                            pass
                counts["answered"] += 1
            except TimeoutError:
                counts["timeouts"] += 1
    finally:
        writer.close()


async def _load(estate: Estate, endpoints: dict[str, Any], mode: str, seconds: float) -> None:
    counts = {"answered": 0, "timeouts": 0}
    until = time.monotonic() + seconds
    buses = [b for g in estate.gateways for b in g.buses]
    await asyncio.gather(*(_poll_bus(b, endpoints[b.id], mode, until, counts) for b in buses))
    print(json.dumps(counts), flush=True)


# ---------------------------------------------------------------- the benchmark


def _start_simulator(estate_path: Path, ports_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "shuidian_simulator", "--estate", str(estate_path)]
    command += ["--ports-file", str(ports_path), "--control-port", str(infra.free_port())]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(path.exists):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        await asyncio.sleep(0.2)


async def _one_run(sim: psutil.Process, estate_path: Path, ports_path: Path, mode: str) -> dict[str, float]:
    window = WINDOW_S[mode]
    load = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shuidian_devstack.bench_simulator",
        "load",
        str(estate_path),
        str(ports_path),
        mode,
        str(window),
        stdout=asyncio.subprocess.PIPE,
    )
    generator = psutil.Process(load.pid)
    await asyncio.sleep(3.0)  # let the load generator parse the estate and connect before measuring
    cpu_before, load_before, wall_before = sum(sim.cpu_times()[:2]), sum(generator.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(window - 5.0)
    cpu_after, load_after, wall_after = sum(sim.cpu_times()[:2]), sum(generator.cpu_times()[:2]), time.monotonic()
    rss = sim.memory_info().rss
    stdout, _ = await load.communicate()
    counts = json.loads(stdout.decode().strip().splitlines()[-1])
    return {
        "cores": (cpu_after - cpu_before) / (wall_after - wall_before),
        "load_generator_cores": (load_after - load_before) / (wall_after - wall_before),
        "rss_mb": rss / 2**20,
        "reads_per_s": counts["answered"] / window,
        "timeouts": counts["timeouts"],
    }


async def run(database_url: str, mqtt_url: str) -> None:
    del database_url, mqtt_url  # the simulator needs neither
    estate = bench_estate()
    ceiling = sum(1 / line_seconds(b) for g in estate.gateways for b in g.buses)
    with tempfile.TemporaryDirectory(prefix="shuidian-bench-sim-") as tmp:
        estate_path, ports_path = Path(tmp) / "estate.json", Path(tmp) / "ports.json"
        estate_path.write_text(estate.model_dump_json())
        process = _start_simulator(estate_path, ports_path)
        try:
            started = time.monotonic()
            await _wait_for(ports_path, process)
            startup = time.monotonic() - started
            sim = psutil.Process(process.pid)
            idle_rss = sim.memory_info().rss / 2**20
            for mode in ("minute", "full"):
                runs = [await _one_run(sim, estate_path, ports_path, mode) for _ in range(RUNS)]
                cores = [r["cores"] for r in runs]
                reads = statistics.median(r["reads_per_s"] for r in runs)
                expected = METERS / POLL_INTERVAL_S if mode == "minute" else ceiling
                emit(
                    f"simulator_cpu_cores_{mode}_poll",
                    statistics.median(cores),
                    "cores",
                    1.0,
                    statistics.median(cores) < 1.0,
                    min=round(min(cores), 3),
                    max=round(max(cores), 3),
                    reads_per_s=round(reads, 1),
                    expected_reads_per_s=round(expected, 1),
                    share_of_expected=round(reads / expected, 3),
                    timeouts=[int(r["timeouts"]) for r in runs],
                    load_generator_cores=round(statistics.median(r["load_generator_cores"] for r in runs), 3),
                    rss_mb=round(statistics.median(r["rss_mb"] for r in runs), 1),
                    gateways=GATEWAYS,
                    meters=METERS,
                    window_s=WINDOW_S[mode],
                    cpus=os.cpu_count(),
                )
            emit(
                "simulator_rss_idle",
                idle_rss,
                "MiB",
                1024,
                idle_rss < 1024,
                startup_s=round(startup, 1),
                gateways=GATEWAYS,
                meters=METERS,
            )
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    _, _, estate_arg, ports_arg, mode_arg, seconds_arg = sys.argv
    loaded = Estate.load(Path(estate_arg))
    asyncio.run(_load(loaded, json.loads(Path(ports_arg).read_text()), mode_arg, float(seconds_arg)))
