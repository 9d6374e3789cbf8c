"""Commands the collector refuses before writing anything to the meter come back `rejected`, a final outcome
control does not retry: a parameter value the meter cannot take (DL/T 645 and Modbus) and DL/T 645
credentials the collector lacks or cannot use. What goes on the wire is checked on real sockets, against the
simulator's wire log and a recording Modbus TCP endpoint; a command that does reach the meter and is refused
there stays `failed`, with the meter's answer."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.drivers import Driver
from shuidian_collector.adapters.drivers.dlt645 import Dlt645Driver
from shuidian_collector.adapters.drivers.modbus import ModbusDriver
from shuidian_collector.adapters.poller import GatewayPoller, PollPolicy
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.domain.commands import ConfirmPolicy
from shuidian_collector.domain.devices import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from shuidian_collector.errors import BusError
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_protocols import dlt645
from shuidian_protocols.modbus_profiles import DeviceProfile, parse_profile
from shuidian_shared.messages import CommandKind, CommandOrigin, CommandRequested, CommandStatus, RelayState, Utility
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.integration

PASSWORD = {"password": "123456", "password_level": "02", "operator": "00000001"}
REJECTED_PREFIX = "采集器拒绝执行"
PROFILE = """
model: test-rejected
vendor: Test
description: a meter with one writable parameter
kind: electricity
serial: {baud: 9600, parity: N, confirmed: false}
max_registers_per_read: 125
registers:
  - {name: energy_active_import_total, address: 0, function: 3, type: uint32, scale: "0.01", unit: kWh,
     confirmed: true, source: test}
  - {name: alarm_money_1, address: 0x10, function: 3, type: uint32, scale: "0.01", unit: CNY,
     confirmed: true, source: test, writable: true}
controls:
  - action: trip
    writes:
      - {function: 16, address: 0x0057, values: [0x0001, 0x0001]}
    confirmed: false
    source: hearsay, as the shipped Acrel profiles have it
"""


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_collector", "collector")
    yield engine
    await engine.dispose()


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


PollerFactory = Callable[[GatewayConfig, dict[str, Driver]], Awaitable[GatewayPoller]]


@pytest.fixture
async def make_poller(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[PollerFactory]:
    made: list[tuple[GatewayPoller, LocalStore]] = []

    async def make(gateway: GatewayConfig, drivers: dict[str, Driver]) -> GatewayPoller:
        store = LocalStore(tmp_path / f"{uuid.uuid4().hex}.sqlite3", max_rows=100)
        await store.__aenter__()
        poller = GatewayPoller(gateway, drivers, store, DeviceStates(engine, "test"), "test", PollPolicy(0.2, 0.5))
        made.append((poller, store))
        return poller

    yield make
    for poller, store in made:
        for bus in poller.buses.values():
            await bus.link.close()
        await store.__aexit__(None, None, None)


# ---------------------------------------------------------------- DL/T 645, against the simulator


@pytest.fixture
async def dlt645_meter(make_poller: PollerFactory) -> AsyncIterator[Callable[[str], Awaitable[tuple[Any, Any]]]]:
    """A one-meter DL/T 645 bus in the simulator and a poller for it, without a configured password."""
    sims: list[Simulator] = []

    async def start(tag: str) -> tuple[Simulator, GatewayPoller]:
        meter = {"id": f"m-{tag}", "address": "000000000001", "initial_register": "100", "prepaid_money": "50.00"}
        bus = {"id": f"bus-{tag}", "protocol": "dlt645", "baud": 9600, "reply_delay_ms": 20, "meters": [meter]}
        sim = Simulator(Estate.model_validate({"seed": 7, "gateways": [{"id": f"gw-{tag}", "buses": [bus]}]}))
        await sim.__aenter__()
        sims.append(sim)
        host, port = sim.bus_endpoint(f"bus-{tag}")
        config = BusConfig(
            f"bus-{tag}",
            f"gw-{tag}",
            host,
            port,
            BusProtocol.DLT645,
            9600,
            500,
            1,
            (MeterConfig(f"m-{tag}", "000000000001", "dlt645-prepaid", Utility.ELECTRICITY, 60),),
        )
        driver = Dlt645Driver(timezone="Asia/Shanghai", confirm=ConfirmPolicy(10, 0.05))
        return sim, await make_poller(GatewayConfig(f"gw-{tag}", (config,)), {BusProtocol.DLT645: driver})

    yield start
    for sim in sims:
        await sim.__aexit__(None, None, None)


def _sent(sim: Simulator, bus_id: str) -> list[dlt645.Frame]:
    """The frames the meters received, decoded."""
    return [dlt645.decode_frame(frame) for _, direction, frame in sim.wire_log(bus_id) if direction == "rx"]


async def test_collector_rejects_a_dlt645_parameter_value_the_meter_cannot_take(dlt645_meter: Any) -> None:
    sim, poller = await dlt645_meter("rjval")
    for value in ("10.005", "-5", "1000000"):  # two decimals, unsigned, six digits (XXXXXX.XX) at most
        outcome = await poller.execute(
            _command("m-rjval", CommandKind.PARAMETER_WRITE, name="alarm_money_1", value=value, **PASSWORD)
        )
        assert outcome.status is CommandStatus.REJECTED, (value, outcome.detail)
        assert outcome.detail.startswith(REJECTED_PREFIX), outcome.detail
        assert "does not fit alarm_money_1" in outcome.detail
        assert (outcome.request_frame, outcome.response_frame) == (None, None)
    assert _sent(sim, "bus-rjval") == []
    # A value that fits goes out; the simulator refuses every write, and that refusal (an answer) stays failed.
    sent = await poller.execute(
        _command("m-rjval", CommandKind.PARAMETER_WRITE, name="alarm_money_1", value="10.00", **PASSWORD)
    )
    assert sent.status is CommandStatus.FAILED, sent.detail
    assert sent.response_frame is not None
    assert [f.function for f in _sent(sim, "bus-rjval")] == [dlt645.Function.WRITE]


async def test_collector_rejects_a_dlt645_write_without_a_password(dlt645_meter: Any) -> None:
    sim, poller = await dlt645_meter("rjpw")
    outcome = await poller.execute(_command("m-rjpw", CommandKind.PARAMETER_WRITE, name="power_limit", value="8"))
    assert outcome.status is CommandStatus.REJECTED, outcome.detail
    assert outcome.detail.startswith(REJECTED_PREFIX)
    assert "parameter_write needs the meter password" in outcome.detail
    assert outcome.request_frame is None
    assert _sent(sim, "bus-rjpw") == []


async def test_collector_rejects_a_dlt645_relay_command_with_credentials_it_cannot_send(dlt645_meter: Any) -> None:
    sim, poller = await dlt645_meter("rjrelay")
    for credentials in ({"password": "12345a"}, {"password": "1234567"}, {**PASSWORD, "operator": "123456789"}):
        outcome = await poller.execute(_command("m-rjrelay", CommandKind.TRIP, **credentials))
        assert outcome.status is CommandStatus.REJECTED, (credentials, outcome.detail)
        assert outcome.detail.startswith(REJECTED_PREFIX)
        assert "must be at most" in outcome.detail
        assert outcome.request_frame is None
    assert _sent(sim, "bus-rjrelay") == []
    assert not sim.meter("m-rjrelay").relay_open
    # Without any password the relay command is still sent, at level 02 / 000000, as documented.
    trip = await poller.execute(_command("m-rjrelay", CommandKind.TRIP))
    assert trip.status is CommandStatus.CONFIRMED, trip.detail
    assert trip.relay is RelayState.OPEN
    assert sim.meter("m-rjrelay").relay_open
    relay_frames = [f for f in _sent(sim, "bus-rjrelay") if f.function == dlt645.Function.RELAY_CONTROL]
    assert len(relay_frames) == 1


# ---------------------------------------------------------------- Modbus TCP, against a recording endpoint


@pytest.fixture
async def recorded_modbus(make_poller: PollerFactory) -> AsyncIterator[tuple[GatewayPoller, bytearray]]:
    """A Modbus TCP gateway that records every byte it receives and never answers."""
    received = bytearray()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(4096):
                received.extend(chunk)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    profile = parse_profile(PROFILE)

    def profiles(model: str) -> DeviceProfile:
        assert model == "test-rejected"
        return profile

    driver = ModbusDriver(rtu=False, confirm=ConfirmPolicy(2, 0.05), profiles=profiles)
    meter = MeterConfig("E-rj", "1", "test-rejected", Utility.ELECTRICITY, 60)
    bus = BusConfig("bus-rj", "gw-rj", "127.0.0.1", port, BusProtocol.MODBUS_TCP, 9600, 200, 0, (meter,))
    poller = await make_poller(GatewayConfig("gw-rj", (bus,)), {BusProtocol.MODBUS_TCP: driver})
    yield poller, received
    server.close()
    await server.wait_closed()


async def test_collector_rejects_a_modbus_value_the_profile_cannot_encode(
    recorded_modbus: tuple[GatewayPoller, bytearray],
) -> None:
    poller, received = recorded_modbus
    # uint32 with scale 0.01: a third decimal, a negative and a value beyond 2^32 - 1 hundredths cannot be encoded.
    for value, why in (("1.001", "not a multiple of the scale"), ("-1", "does not fit"), ("42949673", "does not fit")):
        outcome = await poller.execute(_command("E-rj", CommandKind.PARAMETER_WRITE, name="alarm_money_1", value=value))
        assert outcome.status is CommandStatus.REJECTED, (value, outcome.detail)
        assert outcome.detail.startswith(REJECTED_PREFIX)
        assert why in outcome.detail, outcome.detail
        assert outcome.request_frame is None
    await asyncio.sleep(0.1)
    assert bytes(received) == b""
    # The endpoint does see a value that fits: one write multiple registers (10H) of 1.00 CNY = 100 hundredths.
    with pytest.raises(BusError):
        await poller.execute(_command("E-rj", CommandKind.PARAMETER_WRITE, name="alarm_money_1", value="1.00"))
    pdu = bytes(received)[7:]  # after the MBAP header
    assert pdu[:1] == b"\x10"
    assert pdu[1:] == struct.pack(">HHBHH", 0x10, 2, 4, 0, 100)


async def test_collector_refuses_a_modbus_control_its_profile_has_not_confirmed(
    recorded_modbus: tuple[GatewayPoller, bytearray],
) -> None:
    """A trip mapped to a register no vendor manual confirms (0057H) is refused like an unconfirmed parameter."""
    poller, received = recorded_modbus
    outcome = await poller.execute(_command("E-rj", CommandKind.TRIP))
    assert outcome.status is CommandStatus.UNSUPPORTED, outcome.detail
    assert "not confirmed by the vendor manual" in outcome.detail
    assert outcome.request_frame is None
    await asyncio.sleep(0.1)
    assert bytes(received) == b""
