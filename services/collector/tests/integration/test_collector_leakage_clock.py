"""Leakage and clock offset in readings, on real bytes from the simulator: a Modbus meter with residual-current
registers (generic-rcd-meter) flagged `leakage` from its alarm or from the collector's threshold; DL/T 645 and
CJ/T 188 meters whose clocks drift report `clock_offset_s` once per check interval, flagged `clock_drift` beyond the
tolerance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from shuidian_collector.adapters.drivers import Driver
from shuidian_collector.adapters.drivers.cjt188 import Cjt188Driver
from shuidian_collector.adapters.drivers.dlt645 import Dlt645Driver
from shuidian_collector.adapters.drivers.modbus import ModbusDriver
from shuidian_collector.adapters.transport import POLL_PRIORITY, Bus
from shuidian_collector.domain.devices import BusConfig, BusProtocol, MeterConfig
from shuidian_collector.domain.readings import ClockPolicy
from shuidian_shared.messages import CLOCK_OFFSET, RESIDUAL_CURRENT, Reading, ReadingFlag, Utility
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, Fault, FaultKind

pytestmark = pytest.mark.integration
DI_DATE = bytes([0x34, 0x34, 0x33, 0x37])  # 04000101 as it travels (+33, little-endian)


def estate(protocol: str, meters: list[dict[str, Any]]) -> Estate:
    return Estate.model_validate(
        {
            "seed": 9,
            "gateways": [{"id": "gw", "buses": [{"id": "bus", "protocol": protocol, "baud": 19200, "meters": meters}]}],
        }
    )


@pytest.fixture
async def simulated() -> AsyncIterator[Any]:
    opened: list[tuple[Simulator, Bus]] = []

    async def start(protocol: BusProtocol, meters: list[dict[str, Any]], driver: Driver) -> tuple[Simulator, Bus]:
        sim = Simulator(estate(protocol.value, meters))
        await sim.__aenter__()
        host, port = sim.bus_endpoint("bus")
        config = BusConfig("bus", "gw", host, port, protocol, 19200, 500, 1, ())
        bus = Bus("bus", protocol.value, driver.open(config), timeout=0.5, retries=1)
        opened.append((sim, bus))
        return sim, bus

    yield start
    for sim, bus in opened:
        await bus.link.close()
        await sim.__aexit__(None, None, None)


async def read(driver: Driver, bus: Bus, meter_id: str, address: str, model: str, utility: Utility) -> Reading:
    return await driver.read(bus.channel(POLL_PRIORITY), MeterConfig(meter_id, address, model, utility, 60))


async def test_residual_current_is_published_and_leakage_flagged(simulated: Any) -> None:
    driver = ModbusDriver(rtu=True, leakage_threshold_ma=Decimal(15))
    meters = [
        {"id": "E-ok", "address": "1", "model": "generic-rcd-meter"},
        {"id": "E-leak", "address": "2", "model": "generic-rcd-meter", "faults": [{"kind": "earth_leakage"}]},
        {
            "id": "E-small",
            "address": "3",
            "model": "generic-rcd-meter",
            "faults": [{"kind": "earth_leakage", "milliamps": "20"}],
        },
    ]
    sim, bus = await simulated(BusProtocol.MODBUS_RTU, meters, driver)

    async def reading(meter_id: str, address: str, on: ModbusDriver = driver) -> Reading:
        return await read(on, bus, meter_id, address, "generic-rcd-meter", Utility.ELECTRICITY)

    ok, leak, small = await reading("E-ok", "1"), await reading("E-leak", "2"), await reading("E-small", "3")
    assert ok.registers[RESIDUAL_CURRENT] == 0
    assert ReadingFlag.LEAKAGE not in ok.flags
    assert leak.registers[RESIDUAL_CURRENT] == Decimal(50)  # the fault's default
    assert ReadingFlag.LEAKAGE in leak.flags  # the meter's own alarm (≥ 30 mA)
    assert "leakage_alarm" not in leak.registers  # a state code, not a value
    # 20 mA: no alarm from the meter; flagged by the collector's threshold (15 mA here), not by the default 30 mA.
    assert small.registers[RESIDUAL_CURRENT] == Decimal(20)
    assert ReadingFlag.LEAKAGE in small.flags
    default = await reading("E-small", "3", ModbusDriver(rtu=True))
    assert ReadingFlag.LEAKAGE not in default.flags
    # The fault cleared: the next reading has no leakage.
    sim.clear_fault("E-leak", FaultKind.EARTH_LEAKAGE)
    healed = await reading("E-leak", "2")
    assert (healed.registers[RESIDUAL_CURRENT], ReadingFlag.LEAKAGE in healed.flags) == (Decimal(0), False)
    # Supply cut: no current, so no residual current either.
    sim.set_fault("E-small", Fault(kind=FaultKind.EARTH_LEAKAGE, milliamps=Decimal(80)))
    sim.meter("E-small").set_relay(True)
    cut = await reading("E-small", "3")
    assert cut.registers[RESIDUAL_CURRENT] == 0


async def test_dlt645_clock_offset_once_per_interval_with_drift_flag(simulated: Any) -> None:
    driver = Dlt645Driver(timezone="Asia/Shanghai", clock=ClockPolicy(check_interval_s=1.0, drift_tolerance_s=60))
    meters = [
        {"id": "E-true", "address": "000000000001"},
        {"id": "E-fast", "address": "000000000002", "faults": [{"kind": "clock_drift", "seconds": 150}]},
        {"id": "E-slow", "address": "000000000003", "faults": [{"kind": "clock_drift", "seconds": -40}]},
    ]
    sim, bus = await simulated(BusProtocol.DLT645, meters, driver)

    async def reading(meter_id: str, address: str) -> Reading:
        return await read(driver, bus, meter_id, address, "dlt645-generic", Utility.ELECTRICITY)

    true, fast, slow = (
        await reading("E-true", "000000000001"),
        await reading("E-fast", "000000000002"),
        await reading("E-slow", "000000000003"),
    )
    assert abs(true.registers[CLOCK_OFFSET]) <= 1
    assert ReadingFlag.CLOCK_DRIFT not in true.flags
    assert abs(fast.registers[CLOCK_OFFSET] - 150) <= 1
    assert ReadingFlag.CLOCK_DRIFT in fast.flags
    assert abs(slow.registers[CLOCK_OFFSET] + 40) <= 1
    assert ReadingFlag.CLOCK_DRIFT not in slow.flags  # within the 60 s tolerance
    date_reads = sum(1 for _, d, f in sim.wire_log("bus") if d == "rx" and DI_DATE in f)
    assert date_reads == 3
    # Within the interval: no clock read on the wire, no offset in the reading.
    again = await reading("E-fast", "000000000002")
    assert CLOCK_OFFSET not in again.registers
    assert ReadingFlag.CLOCK_DRIFT not in again.flags
    assert sum(1 for _, d, f in sim.wire_log("bus") if d == "rx" and DI_DATE in f) == date_reads
    await asyncio.sleep(1.05)
    later = await reading("E-fast", "000000000002")
    assert abs(later.registers[CLOCK_OFFSET] - 150) <= 1


async def test_cjt188_clock_offset_comes_from_the_reply_it_already_reads(simulated: Any) -> None:
    driver = Cjt188Driver(clock=ClockPolicy(check_interval_s=3600, drift_tolerance_s=60))
    meters = [
        {"id": "W-true", "address": "00000000000001", "utility": "water"},
        {
            "id": "W-off",
            "address": "00000000000002",
            "utility": "water",
            "faults": [{"kind": "clock_drift", "seconds": -600}],
        },
    ]
    sim, bus = await simulated(BusProtocol.CJT188, meters, driver)
    true = await read(driver, bus, "W-true", "00000000000001", "cjt188-generic", Utility.WATER)
    off = await read(driver, bus, "W-off", "00000000000002", "cjt188-generic", Utility.WATER)
    assert abs(true.registers[CLOCK_OFFSET]) <= 1
    assert abs(off.registers[CLOCK_OFFSET] + 600) <= 1
    assert ReadingFlag.CLOCK_DRIFT in off.flags
    requests = sum(1 for _, d, _ in sim.wire_log("bus") if d == "rx")
    assert requests == 2  # one 901F read each: the time travels in it
    again = await read(driver, bus, "W-off", "00000000000002", "cjt188-generic", Utility.WATER)
    assert CLOCK_OFFSET not in again.registers  # once per check interval
