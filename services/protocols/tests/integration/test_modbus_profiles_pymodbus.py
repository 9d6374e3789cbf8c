"""Profiles against a real pymodbus 3.16 server: RTU framing over loopback TCP, as a transparent gateway gives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import cast

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from shuidian_protocols.modbus_profiles import (
    DeviceProfile,
    control_writes,
    decode_block,
    encode_registers,
    load_profile,
    plan_reads,
)

pytestmark = pytest.mark.integration

DDSY1352_UNIT = 1
DDSU666_UNIT = 2

DDSY1352_VALUES = {
    "energy_active_import_total": Decimal("1234.56"),
    "energy_tariff_1": Decimal("100.01"),
    "energy_tariff_2": Decimal("400.50"),
    "energy_tariff_3": Decimal("500.05"),
    "energy_tariff_4": Decimal("234.00"),
    "voltage_a": Decimal("220.1"),
    "current_a": Decimal("5.23"),
    "power_active": Decimal("-0.125"),  # INT16: exporting
    "power_apparent": Decimal("1.151"),
    "power_factor": Decimal("0.987"),
}
DDSU666_VALUES = {
    "voltage_a": Decimal("229.8"),
    "current_a": Decimal("4.75"),
    "power_active": Decimal("1.0915"),
    "power_apparent": Decimal("1.1"),
    "power_factor": Decimal("0.992"),
    "frequency": Decimal("49.98"),
    "energy_active_import_total": Decimal("8765.43"),
}
RELAY = 0x0057  # where the unconfirmed Acrel relay command is written


def _table(words: Mapping[tuple[int, int], int], function: int, extra: range = range(0)) -> list[SimData]:
    """One contiguous register run per function, zero-filled between readings, like a meter's whole map."""
    addresses = {address for fn, address in words if fn == function} | set(extra)
    if not addresses:
        return [SimData(0xFFF0, values=[0], datatype=DataType.REGISTERS)]  # the simulator wants every table non-empty
    start, stop = min(addresses), max(addresses) + 1
    values = [words.get((function, address), 0) for address in range(start, stop)]
    return [SimData(start, values=values, datatype=DataType.REGISTERS)]


def _device(unit: int, profile: DeviceProfile, values: Mapping[str, Decimal], extra: range = range(0)) -> SimDevice:
    words = encode_registers(profile, values)
    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    # Separate tables (coils, discrete inputs, holding, input) so that a read with the wrong function fails.
    return SimDevice(id=unit, simdata=(no_bits, no_bits, _table(words, 3, extra), _table(words, 4)))


@pytest.fixture
async def line() -> AsyncIterator[AsyncModbusTcpClient]:
    """One simulated RS-485 line with a DDSY1352 at unit 1 and a DDSU666 at unit 2, on a free loopback port."""
    devices = [
        _device(DDSY1352_UNIT, load_profile("acrel-ddsy1352"), DDSY1352_VALUES, extra=range(RELAY, RELAY + 2)),
        _device(DDSU666_UNIT, load_profile("chint-ddsu666"), DDSU666_VALUES),
    ]
    server = ModbusTcpServer(devices, framer=FramerType.RTU, address=("127.0.0.1", 0))  # port 0: free port per test
    await server.serve_forever(background=True)
    port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]  # a TCP listener is an asyncio.Server
    client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=2, retries=0)
    try:
        assert await client.connect()
        yield client
    finally:
        client.close()
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


async def _read_all(client: AsyncModbusTcpClient, unit: int, profile: DeviceProfile) -> dict[str, Decimal]:
    readings: dict[str, Decimal] = {}
    for block in plan_reads(profile):
        read = client.read_holding_registers if block.function == 3 else client.read_input_registers
        response = await read(block.start, count=block.count, device_id=unit)
        assert not response.isError(), response
        readings |= decode_block(profile, block, response.registers)
    return readings


async def test_ddsy1352_reads_back_its_values(line: AsyncModbusTcpClient) -> None:
    profile = load_profile("acrel-ddsy1352")
    assert len(plan_reads(profile)) == 1  # the whole map in one 17-register read
    assert await _read_all(line, DDSY1352_UNIT, profile) == DDSY1352_VALUES


async def test_ddsu666_reads_back_its_floats(line: AsyncModbusTcpClient) -> None:
    assert await _read_all(line, DDSU666_UNIT, load_profile("chint-ddsu666")) == DDSU666_VALUES


async def test_the_wrong_function_is_refused(line: AsyncModbusTcpClient) -> None:
    # DDSU666 readings are input registers (04): the holding-register table (03) does not have them.
    response = await line.read_holding_registers(0x2000, count=2, device_id=DDSU666_UNIT)
    assert response.isError()


async def test_relay_writes_land_where_the_profile_says(line: AsyncModbusTcpClient) -> None:
    profile = load_profile("acrel-ddsy1352")
    for action, expected in (("trip", [1, 1]), ("close", [1, 0])):
        for function, address, values in control_writes(profile, action):
            assert function == 16
            response = await line.write_registers(address, values, device_id=DDSY1352_UNIT)
            assert not response.isError(), response
        readback = await line.read_holding_registers(RELAY, count=2, device_id=DDSY1352_UNIT)
        assert readback.registers == expected
