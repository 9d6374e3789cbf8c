"""The simulator's CJ/T 188 water meters and DL/T 645-1997 legacy meters over real TCP, driven by the
project's codecs: current data in both DI byte orders, read address, valves that take seconds, status
bits, and the 1997 read subset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from shuidian_protocols import cjt188, dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, Fault, FaultKind

W1, W2 = "00000012345678", "00000012345679"
L1 = "000000001997"


def estate(**meter: object) -> Estate:
    water = {
        "id": "water",
        "protocol": "cjt188",
        "baud": 2400,
        "meters": [
            {"id": "W-1", "address": W1, "utility": "water", "initial_register": "123.45", "actuator_ms": 400, **meter},
            {"id": "W-2", "address": W2, "utility": "water", "initial_register": "7"},
        ],
    }
    legacy = {
        "id": "legacy",
        "protocol": "dlt645-1997",
        "baud": 1200,
        "meters": [{"id": "E-97", "address": L1, "initial_register": "4321.09"}],
    }
    return Estate.model_validate({"seed": 5, "acceleration": 600, "gateways": [{"id": "gw", "buses": [water, legacy]}]})


OPEN: list[asyncio.StreamWriter] = []  # client connections the tests opened, closed after each test


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    for writer in OPEN:
        writer.close()
    OPEN.clear()


class Master:
    """A master on one TCP connection that cuts reply frames with the given codec's stream parser."""

    def __init__(self, sim: Simulator, bus: str, parser: cjt188.StreamParser | dlt645.StreamParser) -> None:
        self.endpoint = sim.bus_endpoint(bus)
        self.parser = parser
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes, timeout: float = 3.0) -> object:
        if self.streams is None:
            self.streams = await asyncio.open_connection(*self.endpoint)
            OPEN.append(self.streams[1])
        reader, writer = self.streams
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                frames = self.parser.feed(await reader.read(4096))
                if frames:
                    return frames[0]


async def read_current(master: Master, address: str, order: cjt188.DiOrder, seq: int = 7) -> cjt188.CurrentData:
    frame = await master.exchange(cjt188.read_request(address, seq=seq, order=order))
    assert isinstance(frame, cjt188.Frame)
    assert frame.address == address
    data = cjt188.parse_current_data(frame)
    assert data.seq == seq
    assert data.order is order  # answered in the byte order the request used
    return data


@pytest.mark.parametrize("order", list(cjt188.DiOrder))
async def test_current_data_in_the_order_received(order: cjt188.DiOrder) -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim, "water", cjt188.StreamParser())
        data = await read_current(master, W1, order)
        assert sim.meter("W-1").register >= data.cumulative >= Decimal("123.45")
        assert data.unit is cjt188.Unit.M3
        assert data.settlement == Decimal("123.45")
        assert data.status.valve is cjt188.ValveState.OPEN
        assert not data.status.battery_low
        wire = [f for _, d, f in sim.wire_log("water") if d == "tx"]
        di = wire[-1][2 + 11 : 2 + 13]  # FE FE, 11 header bytes, then the DI
        assert di == (b"\x90\x1f" if order is cjt188.DiOrder.V2004 else b"\x1f\x90")


async def test_read_address_and_unknown_di() -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim, "water", cjt188.StreamParser())
        # Two meters on the bus: an all-wildcard read-address collides and nobody answers.
        with pytest.raises(TimeoutError):
            await master.exchange(cjt188.read_address_request(), timeout=0.5)
        frame = await master.exchange(cjt188.read_request(W2, di=0xD120))
        assert isinstance(frame, cjt188.Frame)
        with pytest.raises(cjt188.MeterErrorReply):
            cjt188.parse_current_data(frame)
    single = Estate.model_validate(
        {
            "gateways": [
                {"id": "g", "buses": [{"id": "water", "protocol": "cjt188", "meters": [{"id": "W", "address": W1}]}]}
            ]
        }
    )
    async with Simulator(single) as sim:
        master = Master(sim, "water", cjt188.StreamParser())
        frame = await master.exchange(cjt188.read_address_request(order=cjt188.DiOrder.V2018))
        assert isinstance(frame, cjt188.Frame)
        assert cjt188.parse_address_reply(frame) == W1


async def test_valve_takes_seconds_to_close_and_reopen() -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim, "water", cjt188.StreamParser())
        started = time.monotonic()
        ack = await master.exchange(cjt188.valve_request(W1, cjt188.MeterType.COLD_WATER, open_valve=False))
        assert isinstance(ack, cjt188.Frame)
        cjt188.parse_valve_ack(ack)
        moving = await read_current(master, W1, cjt188.DiOrder.V2004)
        assert moving.status.valve is cjt188.ValveState.OPEN  # the motor is still running
        async with asyncio.timeout(5):
            while (await read_current(master, W1, cjt188.DiOrder.V2004)).status.valve is not cjt188.ValveState.CLOSED:
                await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.4
        frozen = (await read_current(master, W1, cjt188.DiOrder.V2018)).cumulative
        await asyncio.sleep(0.3)
        assert (await read_current(master, W1, cjt188.DiOrder.V2018)).cumulative == frozen  # no flow when closed
        ack = await master.exchange(
            cjt188.valve_request(W1, cjt188.MeterType.COLD_WATER, open_valve=True, order=cjt188.DiOrder.V2018)
        )
        assert isinstance(ack, cjt188.Frame)
        cjt188.parse_valve_ack(ack)
        async with asyncio.timeout(5):
            while sim.meter("W-1").relay_open:
                await asyncio.sleep(0.05)
        assert [is_open for _, is_open in sim.meter("W-1").relay_history] == [True, False]


async def test_battery_low_and_stuck_valve_and_garbage() -> None:
    async with Simulator(estate(faults=[{"kind": "battery_low"}, {"kind": "stuck_relay"}])) as sim:
        sim.set_fault("W-1", Fault(kind=FaultKind.GARBAGE))
        master = Master(sim, "water", cjt188.StreamParser())
        data = await read_current(master, W1, cjt188.DiOrder.V2004)
        assert data.status.battery_low
        ack = await master.exchange(cjt188.valve_request(W1, cjt188.MeterType.COLD_WATER, open_valve=False))
        assert isinstance(ack, cjt188.Frame)
        cjt188.parse_valve_ack(ack)  # accepted ...
        await asyncio.sleep(0.6)
        assert not sim.meter("W-1").relay_open  # ... but nothing moved


async def test_dlt645_1997_read_subset() -> None:
    async with Simulator(estate()) as sim:
        master = Master(sim, "legacy", dlt645.StreamParser())

        async def read(di: int) -> Decimal:
            frame = await master.exchange(dlt645.read_request_1997(L1, di))
            assert isinstance(frame, dlt645.Frame)
            return dlt645.decode_value_1997(di, dlt645.parse_read_reply_1997(frame, di))

        energy = await read(0x9010)
        assert Decimal("4321.09") <= energy <= sim.meter("E-97").register
        assert await read(0xB611) == Decimal("220")
        assert await read(0xB630) >= 0
        assert await read(0xB621) >= 0
        frame = await master.exchange(dlt645.read_request_1997(L1, 0xC010))
        assert isinstance(frame, dlt645.Frame)
        with pytest.raises(dlt645.MeterErrorReply):
            dlt645.parse_read_reply_1997(frame, 0xC010)
        # A 2007 relay command means nothing to a 1997 meter: no answer.
        with pytest.raises(TimeoutError):
            await master.exchange(dlt645.read_request(L1, 0x00010000), timeout=0.5)


async def test_vendor_status_bit_positions() -> None:
    vendor = {"valve_bits": [6, 7], "battery_low_bit": 5}
    async with Simulator(estate(status_bits=vendor, relay_open=True, faults=[{"kind": "battery_low"}])) as sim:
        master = Master(sim, "water", cjt188.StreamParser())
        frame = await master.exchange(cjt188.read_request(W1))
        assert isinstance(frame, cjt188.Frame)
        layout = cjt188.StatusLayout(valve_bits=(6, 7), battery_low_bit=5)
        status = cjt188.parse_current_data(frame, layout=layout).status
        assert status.valve is cjt188.ValveState.CLOSED
        assert status.battery_low
        assert status.raw == 1 << 6 | 1 << 5
        standard = cjt188.parse_current_data(frame).status  # read with the standard layout it is wrong
        assert standard.valve is cjt188.ValveState.OPEN
