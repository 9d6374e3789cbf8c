"""DL/T 645 time sync, parameter writes and the tariff block read over real sockets: against the simulator
(broadcast time, its refusal of writes, its 0001FF00 block), and against a small meter built from our codec
where the simulator has no path (a meter that accepts writes, a meter without the block read)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.poller import GatewayPoller, PollPolicy
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.app import drivers
from shuidian_collector.domain.commands import CommandOutcome
from shuidian_collector.domain.devices import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_protocols import dlt645
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandRequested, CommandStatus, Reading, Utility
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
PASSWORD = {"password": "123456", "password_level": "02", "operator": "00000001"}
BLOCK_DI = bytes([0x33, 0x32, 0x34, 0x33])  # 0001FF00 as it travels (+33, little-endian)
TOTAL_DI = bytes([0x33, 0x33, 0x34, 0x33])  # 00010000


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_collector", "collector")
    yield engine
    await engine.dispose()


def _estate(tag: str, faults: list[dict[str, Any]] | None = None) -> Estate:
    meters = [
        {
            "id": f"m-{tag}-{n}",
            "address": f"{n + 1:012d}",
            "initial_register": "100",
            "prepaid_money": "50.00",
            "faults": faults if n == 0 and faults else [],
        }
        for n in range(2)
    ]
    bus = {"id": f"bus-{tag}", "protocol": "dlt645", "baud": 9600, "reply_delay_ms": 20, "meters": meters}
    return Estate.model_validate({"seed": 5, "gateways": [{"id": f"gw-{tag}", "buses": [bus]}]})


def _gateway(tag: str, host: str, port: int, meters: list[tuple[str, str]]) -> GatewayConfig:
    bus = BusConfig(
        f"bus-{tag}",
        f"gw-{tag}",
        host,
        port,
        BusProtocol.DLT645,
        9600,
        500,
        1,
        tuple(
            MeterConfig(meter_id, address, "dlt645-prepaid", Utility.ELECTRICITY, 60) for meter_id, address in meters
        ),
    )
    return GatewayConfig(f"gw-{tag}", (bus,))


def _command(meter_id: str, kind: CommandKind, **parameters: str) -> CommandRequested:
    return CommandRequested(
        source="test",
        command_id=uuid.uuid4(),
        meter_id=meter_id,
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        origin=CommandOrigin.OPERATOR,
        reason="test",
        parameters=parameters,
    )


PollerFactory = Callable[..., Awaitable[GatewayPoller]]


@pytest.fixture
async def make_poller(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[PollerFactory]:
    made: list[tuple[GatewayPoller, LocalStore]] = []

    async def make(gateway: GatewayConfig, **settings: Any) -> GatewayPoller:
        store = LocalStore(tmp_path / f"{uuid.uuid4().hex}.sqlite3", max_rows=100)
        await store.__aenter__()
        config = CollectorSettings(environment="test", confirm_interval_seconds=0.05, **settings)
        poller = GatewayPoller(
            gateway, drivers(config), store, DeviceStates(engine, "test"), "test", PollPolicy(0.2, 0.5)
        )
        made.append((poller, store))
        return poller

    yield make
    for poller, store in made:
        for bus in poller.buses.values():
            await bus.link.close()
        await store.__aexit__(None, None, None)


@pytest.fixture
async def simulated(make_poller: PollerFactory) -> AsyncIterator[Callable[..., Awaitable[tuple[Simulator, Any]]]]:
    sims: list[Simulator] = []

    async def start(tag: str, faults: list[dict[str, Any]] | None = None) -> tuple[Simulator, GatewayPoller]:
        sim = Simulator(_estate(tag, faults))
        await sim.__aenter__()
        sims.append(sim)
        host, port = sim.bus_endpoint(f"bus-{tag}")
        meters = [(m.id, m.address) for m in sim.estate.gateways[0].buses[0].meters]
        return sim, await make_poller(_gateway(tag, host, port, meters))

    yield start
    for sim in sims:
        await sim.__aexit__(None, None, None)


def _offset(sim: Simulator, meter_id: str) -> float:
    return (sim.meter(meter_id).local_clock() - datetime.now(SHANGHAI).replace(tzinfo=None)).total_seconds()


def _requests(sim: Simulator, bus_id: str) -> list[bytes]:
    return [frame for _, direction, frame in sim.wire_log(bus_id) if direction == "rx"]


# ---------------------------------------------------------------- against the simulator


async def test_time_sync_by_broadcast_is_confirmed_by_reading_the_clock_back(simulated: Any) -> None:
    sim, poller = await simulated("tsync", [{"kind": "clock_drift", "seconds": 150}])
    assert _offset(sim, "m-tsync-0") > 140
    outcome = await poller.execute(_command("m-tsync-0", CommandKind.TIME_SYNC))
    assert outcome.status is CommandStatus.CONFIRMED, outcome.detail
    assert re.search(r"was off by \+(149|150) s;", outcome.detail), outcome.detail  # a second may pass first
    assert abs(_offset(sim, "m-tsync-0")) <= 5
    assert outcome.request_frame is not None
    assert outcome.response_frame is None
    broadcast = dlt645.decode_frame(outcome.request_frame)
    assert broadcast.address == dlt645.BROADCAST_ADDRESS
    assert broadcast.function == dlt645.Function.BROADCAST_TIME
    assert any(dlt645.decode_frame(f).function == dlt645.Function.BROADCAST_TIME for f in _requests(sim, "bus-tsync"))


async def test_a_large_offset_without_a_password_is_rejected_and_writes_nothing(simulated: Any) -> None:
    sim, poller = await simulated("tbig", [{"kind": "clock_drift", "seconds": -3600}])
    outcome = await poller.execute(_command("m-tbig-0", CommandKind.TIME_SYNC))
    # Final: the same command sent again would be refused again, so control must not retry it.
    assert outcome.status is CommandStatus.REJECTED
    assert outcome.detail.startswith("采集器拒绝执行")
    assert "off by -360" in outcome.detail
    assert "300 s" in outcome.detail
    assert "password" in outcome.detail
    assert outcome.request_frame is None
    functions = {dlt645.decode_frame(f).function for f in _requests(sim, "bus-tbig")}
    assert functions == {dlt645.Function.READ}  # only the clock reads went out
    assert _offset(sim, "m-tbig-0") < -3500


async def test_a_large_offset_is_written_with_the_password_and_a_refusal_shows_the_error_bits(
    simulated: Any,
) -> None:
    _sim, poller = await simulated("trefuse", [{"kind": "clock_drift", "seconds": 3600}])
    outcome = await poller.execute(_command("m-trefuse-0", CommandKind.TIME_SYNC, **PASSWORD))
    assert outcome.status is CommandStatus.FAILED
    assert "error byte 04: UNAUTHORISED" in outcome.detail  # the simulator refuses every write (14)
    assert outcome.request_frame is not None
    assert outcome.response_frame is not None
    request = dlt645.decode_request(dlt645.decode_frame(outcome.request_frame))
    assert isinstance(request, dlt645.WriteRequest)
    assert (request.di, request.password, request.password_level, request.operator) == (0x04000101, 123456, 2, 1)
    assert dlt645.decode_frame(outcome.response_frame).is_error


async def test_parameter_writes_are_checked_before_anything_is_sent(simulated: Any) -> None:
    sim, poller = await simulated("pbad")
    cases = [
        ({"name": "tariff_price", "value": "1"}, "writable: alarm_money_1, alarm_money_2, overdraft_money_limit"),
        ({"value": "1"}, "parameter '' is not writable"),
        ({"name": "alarm_money_1", "value": "abc"}, "not a decimal number"),
        ({"name": "alarm_money_1", "value": "NaN"}, "not a finite number"),
        ({"name": "alarm_money_1", "value": "-5"}, "does not fit alarm_money_1"),
        ({"name": "alarm_money_1", "value": "10.005"}, "does not fit alarm_money_1"),
        ({"name": "power_limit", "value": "100"}, "does not fit power_limit"),
        ({"name": "alarm_money_1", "value": "10"}, "needs the meter password"),
        ({"name": "alarm_money_1", "value": "10", "password": "12345a"}, "password must be at most 6"),
        ({"name": "alarm_money_1", "value": "10", "password": "1234567"}, "password must be at most 6"),
    ]
    for parameters, expected in cases:
        outcome = await poller.execute(_command("m-pbad-0", CommandKind.PARAMETER_WRITE, **parameters))
        # A name the meter does not have is unsupported, a bad value or missing credentials rejected: both final.
        unknown = "is not writable" in expected or "writable:" in expected
        assert outcome.status is (CommandStatus.UNSUPPORTED if unknown else CommandStatus.REJECTED), parameters
        assert expected in outcome.detail, (parameters, outcome.detail)
        assert outcome.request_frame is None
    assert _requests(sim, "bus-pbad") == []


async def test_a_refused_parameter_write_reports_the_decoded_error(simulated: Any) -> None:
    _, poller = await simulated("prefuse")
    outcome = await poller.execute(
        _command("m-prefuse-0", CommandKind.PARAMETER_WRITE, name="alarm_money_1", value="20.00", **PASSWORD)
    )
    assert outcome.status is CommandStatus.FAILED
    assert outcome.detail == "alarm_money_1: meter refused (error byte 04: UNAUTHORISED)"


async def test_a_configured_password_is_used_when_the_command_has_none(simulated: Any, make_poller: Any) -> None:
    sim, _ = await simulated("pconf")
    host, port = sim.bus_endpoint("bus-pconf")
    poller = await make_poller(
        _gateway("pconf", host, port, [("m-pconf-0", "000000000001")]),
        dlt645_password="654321",
        dlt645_operator=42,
    )
    outcome = await poller.execute(_command("m-pconf-0", CommandKind.PARAMETER_WRITE, name="power_limit", value="8"))
    assert outcome.status is CommandStatus.FAILED
    assert "UNAUTHORISED" in outcome.detail
    assert outcome.request_frame is not None
    request = dlt645.decode_request(dlt645.decode_frame(outcome.request_frame))
    assert isinstance(request, dlt645.WriteRequest)
    assert (request.di, request.password, request.operator) == (0x04000E01, 654321, 42)
    assert dlt645.decode_value(0x04000E01, request.payload) == Decimal("8.0000")


async def test_a_poll_reads_total_and_tariffs_in_one_block(simulated: Any) -> None:
    sim, poller = await simulated("tou")
    (reading, _) = await poller.poll(["m-tou-0", "m-tou-1"])
    truth = sim.meter(reading.meter_id)
    registers = reading.registers
    assert [registers[f"energy_tariff_{n}"] for n in range(1, 5)] == list(truth.tariff_registers)
    total = registers["energy_active_import_total"]
    assert isinstance(total, Decimal)
    assert total <= truth.register
    energy_reads = [f for f in _requests(sim, "bus-tou") if dlt645.decode_frame(f).function == dlt645.Function.READ]
    assert sum(f[14:18] == BLOCK_DI for f in energy_reads) == 2
    assert not any(f[14:18] == TOTAL_DI for f in energy_reads)


# ---------------------------------------------------------------- against a meter built from our codec


@dataclass
class CodecMeter:
    """A DL/T 645-2007 meter that accepts writes with its password; knobs for the hostile cases."""

    address: str = "000000000077"
    password: int = 123456
    clock_offset: timedelta = timedelta()
    block: bool = True
    tariffs: bool = True
    store_writes: bool = True
    values: dict[int, Any] = field(
        default_factory=lambda: {
            0x00010000: Decimal("1234.56"),
            0x00010100: Decimal("100.01"),
            0x00010200: Decimal("400.50"),
            0x00010300: Decimal("500.05"),
            0x00010400: Decimal("234.00"),
            0x04001001: Decimal("20.00"),
            0x04000503: dlt645.StatusWord3(),
        }
    )
    seen: list[dlt645.Request] = field(default_factory=list)

    def now(self) -> datetime:
        return datetime.now(SHANGHAI).replace(tzinfo=None) + self.clock_offset

    def value(self, di: int) -> Any:
        if di == 0x04000101:
            return self.now().date()
        if di == 0x04000102:
            return self.now().time().replace(microsecond=0)
        if di == 0x0001FF00 and self.block:
            return tuple(self.values[d] for d in (0x00010000, 0x00010100, 0x00010200, 0x00010300, 0x00010400))
        if 0x00010100 <= di <= 0x00010400 and not self.tariffs:
            return None
        return self.values.get(di)

    def write(self, request: dlt645.WriteRequest) -> None:
        value = dlt645.decode_value(request.di, request.payload)
        if request.di == 0x04000101:
            assert isinstance(value, date)
            self.clock_offset = datetime.combine(value, self.now().time()) - self.now() + self.clock_offset
        elif request.di == 0x04000102:
            assert isinstance(value, time)
            self.clock_offset = datetime.combine(self.now().date(), value) - self.now() + self.clock_offset
        elif self.store_writes:
            self.values[request.di] = value

    def handle(self, frame: dlt645.Frame) -> bytes | None:
        if frame.address != self.address:
            return None
        request = dlt645.decode_request(frame)
        self.seen.append(request)
        if isinstance(request, dlt645.ReadRequest):
            value = self.value(request.di)
            if value is None:
                return dlt645.encode_error_reply(self.address, dlt645.Function.READ, dlt645.ErrorBits.NO_DATA)
            return dlt645.encode_read_reply(self.address, request.di, dlt645.encode_value(request.di, value))
        if isinstance(request, dlt645.WriteRequest):
            if request.password != self.password:
                return dlt645.encode_error_reply(self.address, dlt645.Function.WRITE, dlt645.ErrorBits.UNAUTHORISED)
            self.write(request)
            return dlt645.encode_ack(self.address, dlt645.Function.WRITE)
        return None


@pytest.fixture
async def codec_meter(make_poller: PollerFactory) -> AsyncIterator[Callable[[CodecMeter], Awaitable[GatewayPoller]]]:
    servers: list[asyncio.Server] = []

    async def start(meter: CodecMeter) -> GatewayPoller:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            parser = dlt645.StreamParser()
            try:
                while chunk := await reader.read(4096):
                    for frame in parser.feed(chunk):
                        if not frame.is_reply and (answer := meter.handle(frame)) is not None:
                            writer.write(answer)
                            await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return await make_poller(_gateway("codec", "127.0.0.1", port, [("m-codec", meter.address)]))

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _write(poller: GatewayPoller, name: str, value: str, **credentials: str) -> CommandOutcome:
    return await poller.execute(_command("m-codec", CommandKind.PARAMETER_WRITE, name=name, value=value, **credentials))


async def test_a_parameter_write_is_confirmed_by_reading_it_back(codec_meter: Any) -> None:
    meter = CodecMeter()
    poller = await codec_meter(meter)
    outcome = await _write(poller, "alarm_money_1", "35.5", **PASSWORD)
    assert outcome.status is CommandStatus.CONFIRMED, outcome.detail
    assert outcome.detail == "alarm_money_1 = 35.50 CNY read back"
    assert meter.values[0x04001001] == Decimal("35.50")
    assert isinstance(meter.seen[-1], dlt645.ReadRequest)
    assert meter.seen[-1].di == 0x04001001


async def test_a_wrong_password_and_a_meter_that_ignores_the_write_both_fail(codec_meter: Any) -> None:
    meter = CodecMeter()
    poller = await codec_meter(meter)
    wrong = await _write(poller, "alarm_money_2", "10", password="111111")
    assert wrong.status is CommandStatus.FAILED
    assert wrong.detail == "alarm_money_2: meter refused (error byte 04: UNAUTHORISED)"
    meter.store_writes = False
    ignored = await _write(poller, "alarm_money_1", "99", **PASSWORD)
    assert ignored.status is CommandStatus.FAILED
    assert ignored.detail == "accepted but alarm_money_1 reads back 20.00 CNY, not 99"


async def test_a_large_clock_offset_is_corrected_by_writing_date_and_time(codec_meter: Any) -> None:
    meter = CodecMeter(clock_offset=timedelta(hours=-26))
    poller = await codec_meter(meter)
    outcome = await poller.execute(_command("m-codec", CommandKind.TIME_SYNC, **PASSWORD))
    assert outcome.status is CommandStatus.CONFIRMED, outcome.detail
    assert "off by -93600 s" in outcome.detail
    assert abs(meter.clock_offset.total_seconds()) <= 5
    writes = [r.di for r in meter.seen if isinstance(r, dlt645.WriteRequest)]
    assert writes == [0x04000101, 0x04000102]


async def test_a_meter_without_the_block_read_is_read_by_single_registers(codec_meter: Any) -> None:
    meter = CodecMeter(block=False)
    poller = await codec_meter(meter)
    first: list[Reading] = await poller.poll(["m-codec"])
    second: list[Reading] = await poller.poll(["m-codec"])
    for (reading,) in (first, second):
        assert reading.registers["energy_active_import_total"] == Decimal("1234.56")
        assert reading.registers["energy_tariff_4"] == Decimal("234.00")
    block_reads = [r for r in meter.seen if isinstance(r, dlt645.ReadRequest) and r.di == 0x0001FF00]
    assert len(block_reads) == 1  # refused once, never asked again
    meter.tariffs = False
    (reading,) = await poller.poll(["m-codec"])
    assert set(reading.registers) == {"energy_active_import_total"}  # all four tariffs or none
    assert not reading.flags


@pytest.mark.parametrize("password", ["12345", "1234567", "12a456", ""])
def test_a_configured_password_must_be_six_digits(password: str) -> None:
    with pytest.raises(ValueError, match="6 decimal digits"):
        CollectorSettings(environment="test", dlt645_password=password)
