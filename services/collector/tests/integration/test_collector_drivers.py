"""The CJ/T 188, DL/T 645-1997 and Modbus drivers over real loopback sockets: CJ/T 188 and DL/T 645-1997
against small responders built from our codecs, Modbus against pymodbus's own server (RTU over TCP and
Modbus TCP), each mapped to the canonical reading."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from shuidian_collector.adapters.drivers.cjt188 import Cjt188Driver
from shuidian_collector.adapters.drivers.dlt645 import Dlt645v1997Driver
from shuidian_collector.adapters.drivers.modbus import ModbusDriver
from shuidian_collector.adapters.transport import POLL_PRIORITY, Bus
from shuidian_collector.domain.commands import ConfirmPolicy
from shuidian_collector.domain.devices import BusConfig, BusProtocol, MeterConfig
from shuidian_collector.errors import BusTimeout
from shuidian_protocols import cjt188, dlt645
from shuidian_protocols.errors import DeviceError
from shuidian_protocols.modbus_profiles import DeviceProfile, encode_registers, load_profile
from shuidian_shared.messages import (
    CLOCK_OFFSET,
    CommandKind,
    CommandOrigin,
    CommandRequested,
    CommandStatus,
    ReadingFlag,
    Utility,
    ValveState,
)

pytestmark = pytest.mark.integration
WATER = "00000012345678"
FAST = ConfirmPolicy(attempts=5, interval=0.05)


@dataclass
class WaterMeter:
    volume: Decimal = Decimal("123.45")
    closed: bool = False
    battery_low: bool = False
    stuck: bool = False
    requests: list[bytes] = field(default_factory=list)

    @property
    def status(self) -> int:
        return (1 if self.closed else 0) | (4 if self.battery_low else 0)


async def _serve(handler: Callable[[bytes], bytes | None], parser: Callable[[], Any]) -> tuple[asyncio.Server, int]:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = parser()
        try:
            while chunk := await reader.read(4096):
                for frame in frames.feed(chunk):
                    if not frame.is_reply and (answer := handler(frame)) is not None:
                        writer.write(answer)
                        await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _water_handler(meter: WaterMeter) -> Callable[[cjt188.Frame], bytes | None]:
    def handle(frame: cjt188.Frame) -> bytes | None:
        meter.requests.append(cjt188.encode_frame(frame))
        if not cjt188.addressed_to(frame, WATER, cjt188.MeterType.COLD_WATER):
            return None
        request = cjt188.decode_request(frame)
        if isinstance(request, cjt188.ValveRequest):
            if not meter.stuck:
                meter.closed = not request.open_valve
            return cjt188.encode_valve_ack(
                WATER, cjt188.MeterType.COLD_WATER, seq=request.seq, order=request.order, status_raw=meter.status
            )
        return cjt188.encode_current_data_reply(
            WATER,
            cjt188.MeterType.COLD_WATER,
            cumulative=meter.volume,
            unit=cjt188.Unit.M3,
            settlement=Decimal("100.00"),
            settlement_unit=cjt188.Unit.M3,
            meter_time=datetime(2026, 11, 25, 12, 30),  # noqa: DTZ001 - meter-local, naive on the wire
            status_raw=meter.status,
            seq=request.seq,
            order=request.order,
        )

    return handle


def _bus(protocol: BusProtocol, port: int, link: Any) -> Bus:
    return Bus(f"bus-{protocol.value}", protocol.value, link, timeout=0.5, retries=1)


def _config(protocol: BusProtocol, port: int) -> BusConfig:
    return BusConfig(f"bus-{protocol.value}", "gw", "127.0.0.1", port, protocol, 9600, 500, 1, ())


def _command(meter_id: str, kind: CommandKind) -> CommandRequested:
    return CommandRequested(
        source="test",
        command_id=uuid.uuid4(),
        meter_id=meter_id,
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        origin=CommandOrigin.OPERATOR,
        reason="test",
    )


@pytest.fixture
async def water() -> AsyncIterator[tuple[WaterMeter, Bus, Cjt188Driver]]:
    meter = WaterMeter()
    server, port = await _serve(_water_handler(meter), cjt188.StreamParser)  # type: ignore[arg-type]
    driver = Cjt188Driver(confirm=FAST)
    bus = _bus(BusProtocol.CJT188, port, driver.open(_config(BusProtocol.CJT188, port)))
    yield meter, bus, driver
    await bus.link.close()
    server.close()


WATER_METER = MeterConfig("W-1", WATER, "cjt188-water", Utility.WATER, 60)


async def test_cjt188_reading_is_canonical(water: tuple[WaterMeter, Bus, Cjt188Driver]) -> None:
    meter, bus, driver = water
    meter.battery_low = True
    reading = await driver.read(bus.channel(POLL_PRIORITY), WATER_METER)
    # This meter's clock stands still at 2026-11-25 12:30 (Beijing): its offset is reported, flagged as drift.
    stood_still = datetime(2026, 11, 25, 12, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    offset = reading.registers.pop(CLOCK_OFFSET)
    assert abs(offset - Decimal(round((stood_still - reading.sampled_at).total_seconds()))) <= 1
    assert reading.registers == {"water_volume_total": Decimal("123.45")}
    assert reading.valve is ValveState.OPEN
    assert reading.flags == frozenset({ReadingFlag.BATTERY_LOW, ReadingFlag.CLOCK_DRIFT})
    assert reading.utility is Utility.WATER
    again = await driver.read(bus.channel(POLL_PRIORITY), WATER_METER)
    assert CLOCK_OFFSET not in again.registers  # once per check interval (an hour)


async def test_cjt188_valve_close_is_confirmed_by_reading_back(water: tuple[WaterMeter, Bus, Cjt188Driver]) -> None:
    meter, bus, driver = water
    outcome = await driver.command(bus.channel(0), WATER_METER, _command("W-1", CommandKind.VALVE_CLOSE))
    assert outcome.status is CommandStatus.CONFIRMED
    assert outcome.valve is ValveState.CLOSED
    assert outcome.request_frame is not None
    sent = cjt188.decode_request(cjt188.decode_frame(outcome.request_frame))
    assert isinstance(sent, cjt188.ValveRequest)
    assert not sent.open_valve
    assert meter.closed


async def test_cjt188_stuck_valve_fails_with_detail(water: tuple[WaterMeter, Bus, Cjt188Driver]) -> None:
    meter, bus, driver = water
    meter.stuck = True
    outcome = await driver.command(bus.channel(0), WATER_METER, _command("W-1", CommandKind.VALVE_CLOSE))
    assert outcome.status is CommandStatus.FAILED
    assert "did not move" in outcome.detail
    assert outcome.valve is ValveState.OPEN


async def test_cjt188_silence_is_a_timeout_after_the_retries(water: tuple[WaterMeter, Bus, Cjt188Driver]) -> None:
    meter, bus, driver = water
    other = MeterConfig("W-2", "00000099999999", "cjt188-water", Utility.WATER, 60)
    with pytest.raises(BusTimeout):
        await driver.read(bus.channel(POLL_PRIORITY), other)
    assert len(meter.requests) == 2  # the first try and one retry


async def test_dlt645_1997_reads_energy() -> None:
    address = "000000001997"

    def handle(frame: dlt645.Frame) -> bytes | None:
        request = dlt645.decode_request_1997(frame)
        payload = dlt645.encode_value_1997(request.di, Decimal("4321.09"))
        return dlt645.encode_read_reply_1997(address, request.di, payload)

    server, port = await _serve(handle, dlt645.StreamParser)  # type: ignore[arg-type]
    driver = Dlt645v1997Driver()
    bus = _bus(BusProtocol.DLT645_1997, port, driver.open(_config(BusProtocol.DLT645_1997, port)))
    try:
        meter = MeterConfig("E-97", address, "dlt645-1997", Utility.ELECTRICITY, 60)
        reading = await driver.read(bus.channel(POLL_PRIORITY), meter)
        assert reading.registers == {"energy_active_import_total": Decimal("4321.09")}
        trip = await driver.command(bus.channel(0), meter, _command("E-97", CommandKind.TRIP))
        assert trip.status is CommandStatus.UNSUPPORTED
        assert "not supported by DL/T 645-1997" in trip.detail
    finally:
        await bus.link.close()
        server.close()


DDSY_VALUES = {
    "energy_active_import_total": Decimal("1234.56"),
    "energy_tariff_1": Decimal("100.01"),
    "energy_tariff_2": Decimal("400.50"),
    "energy_tariff_3": Decimal("500.05"),
    "energy_tariff_4": Decimal("234.00"),
    "voltage_a": Decimal("220.1"),
    "current_a": Decimal("5.23"),
    "power_active": Decimal("-0.125"),
    "power_apparent": Decimal("1.151"),
    "power_factor": Decimal("0.987"),
}
VALVE_VALUES = {"water_volume_total": Decimal("12.345"), "water_flow_rate": Decimal("0.5"), "valve_state": Decimal(0)}


def _holding(words: dict[tuple[int, int], int], size: int) -> list[SimData]:
    return [SimData(0, values=[words.get((3, a), 0) for a in range(size)], datatype=DataType.REGISTERS)]


def _vetted(model: str) -> DeviceProfile:
    """The shipped profile with its controls marked confirmed, as a deployment that tested them on its meters would."""
    shipped = load_profile(model).model_dump()
    controls = [c | {"confirmed": True, "source": "tested"} for c in shipped["controls"]]
    return DeviceProfile.model_validate(shipped | {"controls": controls})


@pytest.fixture(params=[True, False], ids=["rtu-over-tcp", "modbus-tcp"])
async def modbus(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bus, ModbusDriver, dict[str, Any]]]:
    rtu: bool = request.param
    seen: dict[str, Any] = {"stuck": False}

    async def valve_action(
        function_code: int, start_address: int, address: int, count: int, current: list[int], values: Any
    ) -> None:
        if function_code == 6 and values is not None and address == 0x0010 and not seen["stuck"]:
            current[0x0004 - start_address] = 0 if values[0] == 1 else 1

    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    devices = [
        SimDevice(
            id=1,
            simdata=(
                no_bits,
                no_bits,
                _holding(encode_registers(load_profile("acrel-ddsy1352"), DDSY_VALUES), 0x60),
                _holding({}, 1),
            ),
        ),
        SimDevice(
            id=2,
            simdata=(
                no_bits,
                no_bits,
                _holding(encode_registers(load_profile("generic-water-valve"), VALVE_VALUES), 0x20),
                _holding({}, 1),
            ),
            action=valve_action,
        ),
    ]
    server = ModbusTcpServer(devices, framer=FramerType.RTU if rtu else FramerType.SOCKET, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]
    protocol = BusProtocol.MODBUS_RTU if rtu else BusProtocol.MODBUS_TCP
    driver = ModbusDriver(rtu=rtu, confirm=FAST, profiles=_vetted)
    bus = _bus(protocol, port, driver.open(_config(protocol, port)))
    yield bus, driver, seen
    await bus.link.close()
    await server.shutdown()  # type: ignore[no-untyped-call]


async def test_modbus_reads_a_profile_in_one_block(modbus: tuple[Bus, ModbusDriver, dict[str, Any]]) -> None:
    bus, driver, _ = modbus
    meter = MeterConfig("E-mb", "1", "acrel-ddsy1352", Utility.ELECTRICITY, 60)
    reading = await driver.read(bus.channel(POLL_PRIORITY), meter)
    assert reading.registers == DDSY_VALUES
    assert reading.relay is None  # the profile maps no relay-state register


async def test_modbus_valve_is_confirmed_and_a_stuck_one_fails(
    modbus: tuple[Bus, ModbusDriver, dict[str, Any]],
) -> None:
    bus, driver, seen = modbus
    meter = MeterConfig("W-mb", "2", "generic-water-valve", Utility.WATER, 60)
    reading = await driver.read(bus.channel(POLL_PRIORITY), meter)
    assert reading.registers == {"water_volume_total": Decimal("12.345"), "water_flow_rate": Decimal("0.5")}
    assert reading.valve is ValveState.OPEN
    closed = await driver.command(bus.channel(0), meter, _command("W-mb", CommandKind.VALVE_CLOSE))
    assert closed.status is CommandStatus.CONFIRMED
    assert closed.valve is ValveState.CLOSED
    assert closed.request_frame == bytes([2, 6, 0x00, 0x10, 0x00, 0x00])
    assert closed.response_frame == bytes([2, 6, 0x00, 0x10, 0x00, 0x00])  # a write single register is echoed
    seen["stuck"] = True
    stuck = await driver.command(bus.channel(0), meter, _command("W-mb", CommandKind.VALVE_OPEN))
    assert stuck.status is CommandStatus.FAILED
    assert stuck.valve is ValveState.CLOSED


async def test_a_profile_sets_its_own_timeout_and_retries() -> None:
    driver = ModbusDriver(rtu=True)
    valve = driver.patience(MeterConfig("W", "2", "generic-water-valve", Utility.WATER, 60))
    assert (valve.timeout, valve.retries) == (2.0, 2)
    plain = driver.patience(MeterConfig("E", "1", "acrel-ddsy1352", Utility.ELECTRICITY, 60))
    assert (plain.timeout, plain.retries) == (None, None)  # the bus's own
    bus = Bus("b", "modbus-rtu", driver.open(_config(BusProtocol.MODBUS_RTU, 1)), timeout=0.5, retries=1)
    channel = bus.channel(POLL_PRIORITY, valve.retries, valve.timeout)
    assert (channel.timeout, channel.retries) == (2.0, 2)
    assert (bus.channel(POLL_PRIORITY).timeout, bus.channel(POLL_PRIORITY).retries) == (0.5, 1)


async def test_modbus_relay_write_without_a_state_register_is_only_acknowledged(
    modbus: tuple[Bus, ModbusDriver, dict[str, Any]],
) -> None:
    bus, driver, _ = modbus
    meter = MeterConfig("E-mb", "1", "acrel-ddsy1352", Utility.ELECTRICITY, 60)
    outcome = await driver.command(bus.channel(0), meter, _command("E-mb", CommandKind.TRIP))
    assert outcome.status is CommandStatus.ACKNOWLEDGED
    assert outcome.request_frame == bytes([1, 0x10, 0x00, 0x57, 0x00, 0x02, 0x04, 0x00, 0x01, 0x00, 0x01])
    assert outcome.response_frame == bytes([1, 0x10, 0x00, 0x57, 0x00, 0x02])  # address and count echoed
    unsupported = await driver.command(bus.channel(0), meter, _command("E-mb", CommandKind.VALVE_OPEN))
    assert unsupported.status is CommandStatus.UNSUPPORTED
    assert "not supported by Modbus acrel-ddsy1352" in unsupported.detail
    assert unsupported.request_frame is None


async def test_modbus_unit_nobody_serves_is_an_error_not_a_reading(
    modbus: tuple[Bus, ModbusDriver, dict[str, Any]],
) -> None:
    bus, driver, _ = modbus
    meter = MeterConfig("E-none", "9", "acrel-ddsy1352", Utility.ELECTRICITY, 60)
    # pymodbus's server answers an unknown unit with exception 04; a real RS-485 line stays silent (timeout).
    with pytest.raises((BusTimeout, DeviceError)):
        await driver.read(bus.channel(POLL_PRIORITY, retries=0), meter)
    # The client stays usable for the meters that do answer.
    good = await driver.read(
        bus.channel(POLL_PRIORITY), MeterConfig("E-mb", "1", "acrel-ddsy1352", Utility.ELECTRICITY, 60)
    )
    assert good.registers == DDSY_VALUES
