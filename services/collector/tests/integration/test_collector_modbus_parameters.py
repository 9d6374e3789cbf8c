"""Modbus parameter writes against pymodbus's own server over a real socket: a register the profile marks
writable and confirmed is written and read back; unconfirmed and unknown registers are unsupported,
out-of-range values rejected (both before anything is sent), a write the meter refuses fails, each with a clear
detail; time sync is not supported (no profile maps a clock)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import cast

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from shuidian_collector.adapters.drivers.modbus import ModbusDriver
from shuidian_collector.adapters.transport import POLL_PRIORITY, Bus
from shuidian_collector.domain.commands import CommandOutcome, ConfirmPolicy, refused
from shuidian_collector.domain.devices import BusConfig, BusProtocol, MeterConfig
from shuidian_collector.errors import CommandRejected
from shuidian_protocols.modbus_profiles import DeviceProfile, ProfileError, parse_profile
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandRequested, CommandStatus, Utility

pytestmark = pytest.mark.integration

PROFILE = """
model: test-parameters
vendor: Test
description: a meter with parameter registers
kind: electricity
serial: {baud: 9600, parity: N, confirmed: false}
max_registers_per_read: 125
registers:
  - {name: energy_active_import_total, address: 0, function: 3, type: uint32, scale: "0.01", unit: kWh,
     confirmed: true, source: test}
  - {name: alarm_money_1, address: 0x10, function: 3, type: uint32, scale: "0.01", unit: CNY,
     confirmed: true, source: test, writable: true}
  - {name: power_limit, address: 0x12, function: 3, type: uint16, scale: "0.1", unit: kW,
     confirmed: false, writable: true}
  - {name: alarm_money_2, address: 0x400, function: 3, type: uint32, scale: "0.01", unit: CNY,
     confirmed: true, source: test, writable: true}
"""


def _command(kind: CommandKind, **parameters: str) -> CommandRequested:
    return CommandRequested(
        source="test",
        command_id=uuid.uuid4(),
        meter_id="E-p",
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        origin=CommandOrigin.OPERATOR,
        reason="test",
        parameters=parameters,
    )


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Bus, ModbusDriver, list[int]]]:
    profile = parse_profile(PROFILE)
    holding = [0] * 0x20
    holding[1] = 12345  # energy 123.45 kWh
    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    registers = [SimData(0, values=holding, datatype=DataType.REGISTERS)]
    device = SimDevice(
        id=1, simdata=(no_bits, no_bits, registers, [SimData(0, values=[0], datatype=DataType.REGISTERS)])
    )
    server = ModbusTcpServer([device], framer=FramerType.SOCKET, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]

    def profiles(model: str) -> DeviceProfile:
        assert model == "test-parameters"
        return profile

    driver = ModbusDriver(rtu=False, confirm=ConfirmPolicy(3, 0.05), profiles=profiles)
    config = BusConfig("bus-p", "gw", "127.0.0.1", port, BusProtocol.MODBUS_TCP, 9600, 500, 1, ())
    bus = Bus("bus-p", "modbus-tcp", driver.open(config), timeout=0.5, retries=1)
    yield bus, driver, holding
    await bus.link.close()
    await server.shutdown()  # type: ignore[no-untyped-call]


METER = MeterConfig("E-p", "1", "test-parameters", Utility.ELECTRICITY, 60)


async def _run(bus: Bus, driver: ModbusDriver, kind: CommandKind, **parameters: str) -> CommandOutcome:
    try:
        return await driver.command(bus.channel(0), METER, _command(kind, **parameters))
    except CommandRejected as err:  # as the poller answers it: unsupported or rejected
        return refused(err)


async def test_a_writable_register_is_written_and_read_back(rig: tuple[Bus, ModbusDriver, list[int]]) -> None:
    bus, driver, _ = rig
    outcome = await _run(bus, driver, CommandKind.PARAMETER_WRITE, name="alarm_money_1", value="655.37")
    assert outcome.status is CommandStatus.CONFIRMED, outcome.detail
    assert outcome.detail == "alarm_money_1 = 655.37 CNY read back"
    # 65537 = 0x0001_0001, high word first, function 10H
    assert outcome.request_frame == bytes([1, 16, 0, 0x10, 0, 2, 4, 0, 1, 0, 1])
    assert outcome.response_frame == bytes([1, 16, 0, 0x10, 0, 2])  # the meter's answer is audited too
    reading = await driver.read(bus.channel(POLL_PRIORITY), METER)
    assert reading.registers == {"energy_active_import_total": Decimal("123.45")}  # parameters are not readings


async def test_hostile_parameter_writes_are_refused_with_a_clear_detail(
    rig: tuple[Bus, ModbusDriver, list[int]],
) -> None:
    bus, driver, _ = rig
    unsupported, rejected = CommandStatus.UNSUPPORTED, CommandStatus.REJECTED
    cases = [
        ({"name": "tariff", "value": "1"}, unsupported, "writable: alarm_money_1, alarm_money_2, power_limit"),
        ({"name": "alarm_money_1", "value": "1.001"}, rejected, "not a multiple of the scale"),
        ({"name": "alarm_money_1", "value": "-1"}, rejected, "does not fit"),
        ({"name": "alarm_money_1", "value": "x"}, rejected, "not a decimal number"),
        ({"name": "power_limit", "value": "5"}, unsupported, "not confirmed by the vendor manual: not written"),
    ]
    for parameters, status, expected in cases:
        outcome = await _run(bus, driver, CommandKind.PARAMETER_WRITE, **parameters)
        assert outcome.status is status, (parameters, outcome)
        assert expected in outcome.detail, (parameters, outcome.detail)
        assert outcome.request_frame is None
    refused = await _run(bus, driver, CommandKind.PARAMETER_WRITE, name="alarm_money_2", value="1")
    assert refused.status is CommandStatus.FAILED
    assert refused.detail.startswith("alarm_money_2: meter refused: Modbus exception")
    clock = await _run(bus, driver, CommandKind.TIME_SYNC)
    assert clock.status is CommandStatus.UNSUPPORTED
    assert clock.request_frame is None
    assert "maps no clock" in clock.detail


def test_only_holding_registers_can_be_writable() -> None:
    text = PROFILE.replace("function: 3, type: uint16", "function: 4, type: uint16")
    with pytest.raises(ProfileError, match="only holding registers"):
        parse_profile(text)
