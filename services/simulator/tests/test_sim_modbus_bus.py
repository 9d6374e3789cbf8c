"""The simulator's Modbus devices (RTU over TCP and Modbus TCP) against the pymodbus client: profile
register maps read and decoded, relay and valve control writes obeyed, multi-circuit unit ids, timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from shuidian_protocols.modbus_profiles import (
    DeviceProfile,
    control_writes,
    decode_block,
    load_profile,
    plan_reads,
)
from shuidian_simulator import Simulator
from shuidian_simulator.adapters.modbus_device import crc16, cut_rtu_requests, rtu_frame
from shuidian_simulator.estate import Estate, Fault, FaultKind

METERS: list[dict[str, Any]] = [
    {"id": "E-1", "address": "1", "model": "acrel-ddsy1352", "initial_register": "1234.56", "actuator_ms": 100},
    {"id": "E-2", "address": "2", "model": "chint-ddsu666", "initial_register": "87.5"},
    {"id": "E-3", "address": "3", "model": "eastron-sdm120", "initial_register": "12"},
    {"id": "W-1", "address": "4", "model": "generic-water-valve", "utility": "water", "actuator_ms": 300},
    {"id": "C-1", "address": "37", "model": "acrel-adf400l", "initial_register": "5"},  # module 2, circuit 1
    {"id": "C-2", "address": "38", "model": "acrel-adf400l", "phases": 3, "initial_register": "6"},
    {"id": "C-5", "address": "41", "model": "acrel-adf400l", "initial_register": "7", "keep_power": True},
]


def estate(protocol: str, baud: int = 9600) -> Estate:
    bus = {"id": "bus", "protocol": protocol, "baud": baud, "reply_delay_ms": 20, "meters": METERS}
    return Estate.model_validate({"seed": 3, "acceleration": 60, "gateways": [{"id": "gw", "buses": [bus]}]})


@pytest.fixture(params=[("modbus-rtu", FramerType.RTU), ("modbus-tcp", FramerType.SOCKET)], ids=["rtu", "tcp"])
async def line(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Simulator, AsyncModbusTcpClient]]:
    protocol, framer = request.param
    async with Simulator(estate(protocol)) as sim:
        host, port = sim.bus_endpoint("bus")
        client = AsyncModbusTcpClient(host, port=port, framer=framer, timeout=1, retries=0)
        assert await client.connect()
        try:
            yield sim, client
        finally:
            client.close()


async def read_all(client: AsyncModbusTcpClient, unit: int, profile: DeviceProfile) -> dict[str, Decimal]:
    readings: dict[str, Decimal] = {}
    for block in plan_reads(profile):
        read = client.read_holding_registers if block.function == 3 else client.read_input_registers
        response = await read(block.start, count=block.count, device_id=unit)
        assert not response.isError(), response
        readings |= decode_block(profile, block, response.registers)
    return readings


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("meter_id", "unit", "model"),
    [("E-1", 1, "acrel-ddsy1352"), ("E-2", 2, "chint-ddsu666"), ("E-3", 3, "eastron-sdm120"), ("C-1", 37, None)],
)
async def test_profile_registers_read_back_the_meter_state(
    line: tuple[Simulator, AsyncModbusTcpClient], meter_id: str, unit: int, model: str | None
) -> None:
    sim, client = line
    profile = load_profile(model or "acrel-adf400l")
    before = sim.meter(meter_id).register
    readings = await read_all(client, unit, profile)
    after = sim.meter(meter_id).register
    energy = readings["energy_active_import_total"]
    if profile.register("energy_active_import_total").type == "float32":
        assert before - Decimal("0.01") <= energy <= after + Decimal("0.01")  # float32 keeps ~7 digits
    else:
        assert before <= energy <= after
    assert readings["voltage_a"] == Decimal("220.1")
    assert readings["power_active"] >= 0


async def test_tariff_registers_add_up_to_the_consumption(line: tuple[Simulator, AsyncModbusTcpClient]) -> None:
    _, client = line
    await asyncio.sleep(0.3)
    readings = await read_all(client, 1, load_profile("acrel-ddsy1352"))
    tariffs = sum(readings[f"energy_tariff_{i}"] for i in range(1, 5))
    consumed = readings["energy_active_import_total"] - Decimal("1234.56")
    assert abs(consumed - tariffs) <= Decimal("0.05")  # each register truncates to 0.01


async def test_trip_and_close_writes_move_the_relay(line: tuple[Simulator, AsyncModbusTcpClient]) -> None:
    sim, client = line
    profile = load_profile("acrel-ddsy1352")
    for action, relay_open in (("trip", True), ("close", False)):
        for function, address, values in control_writes(profile, action):
            assert function == 16
            response = await client.write_registers(address, values, device_id=1)
            assert not response.isError(), response
        await eventually(lambda open_=relay_open: sim.meter("E-1").relay_open is open_)  # type: ignore[misc]
        readings = await read_all(client, 1, profile)
        assert (readings["power_active"] == 0) is relay_open  # an open relay measures nothing
        assert (readings["voltage_a"] == 0) is relay_open
    assert [is_open for _, is_open in sim.meter("E-1").relay_history] == [True, False]


async def test_valve_writes_take_the_motor_time(line: tuple[Simulator, AsyncModbusTcpClient]) -> None:
    sim, client = line
    profile = load_profile("generic-water-valve")
    state = profile.register("valve_state")
    (function, address, values) = control_writes(profile, "valve_close")[0]
    assert function == 6
    started = time.monotonic()
    assert not (await client.write_register(address, values[0], device_id=4)).isError()
    moving = await client.read_holding_registers(state.address, count=1, device_id=4)
    assert moving.registers == [0]  # still open: the motor takes 300 ms in this estate
    await eventually(lambda: sim.meter("W-1").relay_open)
    assert time.monotonic() - started >= 0.3
    closed = await client.read_holding_registers(state.address, count=1, device_id=4)
    assert closed.registers == [1]


async def test_keep_power_refuses_a_trip_and_unknown_writes_are_refused(
    line: tuple[Simulator, AsyncModbusTcpClient],
) -> None:
    sim, client = line
    (_, address, values) = control_writes(load_profile("acrel-adf400l"), "trip")[0]
    refused = await client.write_registers(address, values, device_id=41)
    assert refused.isError()
    assert refused.exception_code == 4
    wrong_value = await client.write_registers(address, [7, 7], device_id=1)
    assert wrong_value.isError()
    assert wrong_value.exception_code == 3
    nowhere = await client.write_register(0x1234, 1, device_id=1)
    assert nowhere.isError()
    assert nowhere.exception_code == 2
    unmapped = await client.read_holding_registers(0x3000, count=2, device_id=1)
    assert unmapped.exception_code == 2
    wrong_function = await client.read_input_registers(0x0000, count=2, device_id=1)  # DDSY1352 is 03 only
    assert wrong_function.exception_code == 2
    await asyncio.sleep(0.2)
    assert not sim.meter("C-5").relay_open
    assert not sim.meter("E-1").relay_open


async def test_three_phase_circuit_answers_on_three_unit_ids_and_an_absent_unit_is_silent(
    line: tuple[Simulator, AsyncModbusTcpClient],
) -> None:
    _, client = line
    for unit in (38, 39, 40):
        response = await client.read_holding_registers(0, count=2, device_id=unit)
        assert not response.isError()
        assert response.registers[1] + (response.registers[0] << 16) >= 600  # 6.00 kWh at ×0.01
    with pytest.raises(ModbusIOException):  # nobody answers unit 99: the client times out
        await client.read_holding_registers(0, count=2, device_id=99)


async def test_bus_time_follows_the_baud_rate_for_modbus() -> None:
    reads = 6
    async with Simulator(estate("modbus-rtu", baud=2400)) as sim:
        host, port = sim.bus_endpoint("bus")
        client = AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, timeout=2, retries=0)
        assert await client.connect()
        started = time.perf_counter()
        for _ in range(reads):
            assert not (await client.read_holding_registers(0, count=17, device_id=1)).isError()
        elapsed = time.perf_counter() - started
        client.close()
    request, reply = 8, 5 + 2 * 17
    per_read = (request + reply + 2 * 3.5) * 11 / 2400 + 0.020
    assert elapsed >= reads * per_read * 0.95


def test_rtu_framing_skips_noise_and_keeps_requests_whole() -> None:
    read = rtu_frame(1, bytes([3, 0, 0, 0, 17]))
    write = rtu_frame(2, bytes([16, 0, 0x57, 0, 2, 4, 0, 1, 0, 1]))
    buf = bytearray(b"\x00\xff\x13" + read + write[:5])
    assert cut_rtu_requests(buf) == [read]
    buf += write[5:]
    assert cut_rtu_requests(buf) == [write]
    assert crc16(b"\x01\x03\x00\x00\x00\x11") == int.from_bytes(read[-2:], "little")
    assert rtu_frame(1, bytes([3, 0, 0, 0, 1])).hex() == "01030000000184 0a".replace(" ", "")


async def test_hostile_bytes_never_kill_the_bus() -> None:
    async with Simulator(estate("modbus-rtu")) as sim:
        host, port = sim.bus_endpoint("bus")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(bytes(range(256)) * 4 + rtu_frame(1, bytes([0x2B, 0x0E, 1, 0])))
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(256), 2)
        assert reply == rtu_frame(1, bytes([0xAB, 1]))  # encapsulated interface: illegal function
        writer.close()
        client = AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, timeout=1, retries=0)
        assert await client.connect()
        assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
        client.close()


async def test_bad_checksum_and_offline_replies_are_unusable(line: tuple[Simulator, AsyncModbusTcpClient]) -> None:
    sim, client = line
    for kind in (FaultKind.BAD_CHECKSUM, FaultKind.OFFLINE):
        sim.set_fault("E-1", Fault(kind=kind))
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=2, device_id=1)
        sim.clear_fault("E-1", kind)
    if not client.connected:
        assert await client.connect()
    response = await client.read_holding_registers(0, count=2, device_id=1)
    assert not response.isError()
