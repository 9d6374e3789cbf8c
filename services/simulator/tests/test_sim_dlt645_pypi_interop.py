"""An implementation nobody here wrote — the PyPI `dlt645` package's asyncio client — reads standard
DIs (energy, voltage, current, power) from the simulator's DL/T 645-2007 meters over loopback TCP.

The package takes the meter address as hex digits in wire order (least significant byte first) and
answers values as floats; the values compared here are exact in binary at their resolution or compared
to the hundredth."""

from __future__ import annotations

from decimal import Decimal

from dlt645.service.clientsvc.async_client_service import AsyncMeterClientService

from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

ADDRESS = "123456789012"


def estate() -> Estate:
    meter = {"id": "E-1", "address": ADDRESS, "initial_register": "1234.56"}
    bus = {"id": "bus", "baud": 9600, "reply_delay_ms": 20, "meters": [meter]}
    return Estate.model_validate({"seed": 9, "acceleration": 1, "gateways": [{"id": "gw", "buses": [bus]}]})


async def test_pypi_client_reads_energy_voltage_and_power() -> None:
    async with Simulator(estate()) as sim:
        host, port = sim.bus_endpoint("bus")
        client = AsyncMeterClientService.new_tcp_client(host, port, timeout=3.0)
        assert client.set_address(bytes.fromhex(ADDRESS)[::-1].hex())
        assert await client.connect()
        try:
            before = sim.meter("E-1").register
            energy = await client.read_00(0x00010000)
            after = sim.meter("E-1").register
            voltage = await client.read_02(0x02010100)
            power = await client.read_02(0x02030000)
            address = await client.read_address()
        finally:
            await client.disconnect()
    assert energy is not None
    assert before <= Decimal(str(energy.value)).quantize(Decimal("0.01")) <= after
    assert voltage is not None
    assert Decimal(str(voltage.value)).quantize(Decimal("0.1")) == Decimal("220.1")
    assert power is not None
    assert 0 <= power.value < 10
    assert address is not None
    assert len(sim.wire_log("bus")) == 8  # four requests, four replies: nothing retried
