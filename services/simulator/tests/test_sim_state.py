"""Simulated meters keep their state across a restart of the simulator, as real meters keep it across a power
cut: the simulator process started as `make run` starts it, read over real sockets with the project's codec,
stopped with SIGINT and started again on the same files. A missing or unusable state file means the seed values."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from shuidian_devstack.infra import free_port
from shuidian_protocols import dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

ADDRESS, TRIPPED = "000000000001", "000000000002"
DI_ENERGY, DI_MONEY, DI_STATUS = 0x00010000, 0x00900200, 0x04000503
SEED = Decimal("500.00")


def _estate() -> dict[str, object]:
    # An hour of consumption per real second, so the registers move visibly within a test.
    return {
        "seed": 4,
        "acceleration": 3600,
        "gateways": [
            {
                "id": "gw-state",
                "buses": [
                    {
                        "id": "bus-state",
                        "baud": 9600,
                        "reply_delay_ms": 5,
                        "meters": [
                            {"id": "E-1", "address": ADDRESS, "initial_register": str(SEED), "prepaid_money": "80.00"},
                            {"id": "E-2", "address": TRIPPED, "initial_register": str(SEED)},
                        ],
                    }
                ],
            }
        ],
    }


class Master:
    """A DL/T 645 master on one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.parser = reader, writer, dlt645.StreamParser()

    async def exchange(self, request: bytes) -> dlt645.Frame:
        self.writer.write(request)
        await self.writer.drain()
        async with asyncio.timeout(5):
            while True:
                frames = self.parser.feed(await self.reader.read(4096))
                if frames:
                    return frames[0]

    async def read(self, address: str, di: int) -> dlt645.Value:
        frame = await self.exchange(dlt645.read_request(address, di))
        return dlt645.decode_value(di, dlt645.parse_read_reply(frame, di))

    async def decimal(self, address: str, di: int) -> Decimal:
        value = await self.read(address, di)
        assert isinstance(value, Decimal)
        return value

    async def relay_open(self, address: str) -> bool:
        status = await self.read(address, DI_STATUS)
        assert isinstance(status, dlt645.StatusWord3)
        return status.relay_open


class Process:
    """`python -m shuidian_simulator --estate …` as devstack's `make run` starts it (no state option given)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.ports = work / "simulator-ports.json"
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Master:
        self.ports.unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shuidian_simulator",
            "--estate",
            str(self.work / "estate.json"),
            "--control-port",
            str(free_port()),
            "--ports-file",
            str(self.ports),
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            while not self.ports.exists():
                assert self.proc.returncode is None, "the simulator stopped during start-up"
                await asyncio.sleep(0.05)
        endpoint = json.loads(self.ports.read_text())["bus-state"]
        reader, self.writer = await asyncio.open_connection(endpoint["host"], endpoint["port"])
        return Master(reader, self.writer)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.writer is not None:
            self.writer.close()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        async with asyncio.timeout(30):
            await self.proc.communicate()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "estate.json").write_text(json.dumps(_estate()))
    return tmp_path


async def test_a_restarted_simulator_keeps_registers_money_and_relay(work: Path) -> None:
    async with Process(work) as master:
        await asyncio.sleep(1.0)
        before = await master.decimal(ADDRESS, DI_ENERGY)
        money_before = await master.decimal(ADDRESS, DI_MONEY)
        expiry = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)
        reply = await master.exchange(dlt645.relay_control_request(TRIPPED, dlt645.RelayCommand.TRIP, expiry))
        dlt645.parse_ack(reply, dlt645.Function.RELAY_CONTROL)
        async with asyncio.timeout(10):
            while not await master.relay_open(TRIPPED):
                await asyncio.sleep(0.1)
        tripped_at = await master.decimal(TRIPPED, DI_ENERGY)
    assert before > SEED, "the meter consumed before the restart"
    async with Process(work) as master:
        after = await master.decimal(ADDRESS, DI_ENERGY)
        money_after = await master.decimal(ADDRESS, DI_MONEY)
        relay_open = await master.relay_open(TRIPPED)
        tripped_after = await master.decimal(TRIPPED, DI_ENERGY)
    assert after >= before, f"the register went back from {before} to {after}"
    assert money_after <= money_before
    assert relay_open, "a tripped relay stays open across the restart"
    assert tripped_after == tripped_at  # nothing flows through an open relay, before or after
    assert (work / "estate.state.json").exists(), "the state file lies beside the estate"


async def test_a_missing_or_unusable_state_file_means_the_seed_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    estate = Estate.model_validate(_estate())
    state_file = tmp_path / "state.json"
    async with Simulator(estate, state_file=state_file) as sim:
        assert sim.meters["E-1"].register < SEED + 1  # a first start: no file yet
        sim.meters["E-1"].registered += Decimal(100)
    saved = json.loads(state_file.read_text())
    assert Decimal(saved["meters"]["E-1"]["registered"]) >= 100

    async with Simulator(estate, state_file=state_file) as sim:
        assert sim.meters["E-1"].register >= SEED + 100

    for garbage in ("{not json", json.dumps({"version": 1, "meters": {"E-1": {"exact": "x"}}})):
        state_file.write_text(garbage)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="shuidian_simulator.adapters.state"):
            async with Simulator(estate, state_file=state_file) as sim:
                assert sim.meters["E-1"].register < SEED + 1
                assert sim.meters["E-2"].register < SEED + 1  # nothing half-restored either
        assert any("unusable" in r.getMessage() for r in caplog.records), caplog.text
