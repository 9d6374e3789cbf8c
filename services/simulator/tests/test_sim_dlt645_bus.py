"""The simulator's DL/T 645 meters over real TCP with the project's codec: reads, relay control,
keep-power, expiry, faults, bus timing and determinism."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from shuidian_protocols import dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.domain.consumption import ConsumptionModel
from shuidian_simulator.estate import Estate, Fault, FaultKind, Profile

A1, A2 = "000000000001", "000000000002"


def estate(baud: int = 9600, **meter: object) -> Estate:
    return Estate.model_validate(
        {
            "seed": 1,
            "acceleration": 600,
            "gateways": [
                {
                    "id": "gw",
                    "buses": [
                        {
                            "id": "bus",
                            "baud": baud,
                            "reply_delay_ms": 20,
                            "meters": [
                                {
                                    "id": "E-1",
                                    "address": A1,
                                    "initial_register": "500.00",
                                    "prepaid_money": "80.00",
                                    **meter,
                                },
                                {"id": "E-2", "address": A2, "initial_register": "10.00"},
                            ],
                        }
                    ],
                }
            ],
        }
    )


class Master:
    """A minimal DL/T 645 master over one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = dlt645.StreamParser()

    async def exchange(self, request: bytes, timeout: float = 2.0) -> dlt645.Frame:
        self.writer.write(request)
        await self.writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                frames = self.parser.feed(await self.reader.read(4096))
                if frames:
                    return frames[0]

    async def read(self, address: str, di: int) -> dlt645.Value:
        frame = await self.exchange(dlt645.read_request(address, di))
        return dlt645.decode_value(di, dlt645.parse_read_reply(frame, di))

    async def relay(self, address: str, command: dlt645.RelayCommand, expires: datetime | None = None) -> dlt645.Frame:
        expiry = expires or meter_clock() + timedelta(minutes=5)
        return await self.exchange(dlt645.relay_control_request(address, command, expiry.replace(microsecond=0)))


def meter_clock() -> datetime:
    """Meters keep Beijing wall-clock time, whatever this machine's zone is."""
    return datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)


OPEN: list[asyncio.StreamWriter] = []  # client connections the tests opened, closed after each test


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    for writer in OPEN:
        writer.close()
    OPEN.clear()


async def connect(sim: Simulator) -> Master:
    host, port = sim.bus_endpoint("bus")
    reader, writer = await asyncio.open_connection(host, port)
    OPEN.append(writer)
    return Master(reader, writer)


async def test_reads_energy_money_and_status_and_registers_only_grow() -> None:
    # At noon: a household at night may use too little for three simulated minutes to move the register.
    noon = datetime(2026, 11, 2, 12, tzinfo=ZoneInfo("Asia/Shanghai"))
    async with Simulator(estate().model_copy(update={"sim_start": noon})) as sim:
        master = await connect(sim)
        first = await master.read(A1, 0x00010000)
        money = await master.read(A1, 0x00900200)
        status = await master.read(A1, 0x04000503)
        await asyncio.sleep(0.3)
        second = await master.read(A1, 0x00010000)
        block = await master.read(A1, 0x0001FF00)
    assert isinstance(first, Decimal)
    assert isinstance(second, Decimal)
    assert first >= Decimal("500.00")
    assert second > first  # 600× acceleration: 0.3 s is three simulated minutes
    assert isinstance(money, Decimal)
    assert money <= Decimal("80.00")
    assert isinstance(status, dlt645.StatusWord3)
    assert not status.relay_open
    assert status.meter_type is dlt645.MeterType.MONEY_PREPAID
    assert isinstance(block, tuple)
    assert block[0] - Decimal("500.00") - sum(block[1:]) <= Decimal("0.04")  # tariffs add up to the total


async def test_trip_opens_the_relay_stops_consumption_and_close_restores() -> None:
    async with Simulator(estate()) as sim:
        master = await connect(sim)
        dlt645.parse_ack(await master.relay(A1, dlt645.RelayCommand.TRIP), dlt645.Function.RELAY_CONTROL)
        await asyncio.sleep(0.3)
        status = await master.read(A1, 0x04000503)
        assert isinstance(status, dlt645.StatusWord3)
        assert status.relay_open
        assert status.relay_commanded_trip
        frozen = await master.read(A1, 0x00010000)
        await asyncio.sleep(0.3)
        assert await master.read(A1, 0x00010000) == frozen
        dlt645.parse_ack(await master.relay(A1, dlt645.RelayCommand.DIRECT_CLOSE), dlt645.Function.RELAY_CONTROL)
        await asyncio.sleep(0.3)
        assert not sim.meter("E-1").relay_open
        assert [is_open for _, is_open in sim.meter("E-1").relay_history] == [True, False]
        trips = [f for _, d, f in sim.wire_log("bus") if d == "rx" and dlt645.decode_frame(f).function == 0x1C]
        assert len(trips) == 2


async def test_keep_power_refuses_trips_and_expired_commands_are_refused() -> None:
    async with Simulator(estate(keep_power=True)) as sim:
        master = await connect(sim)
        with pytest.raises(dlt645.MeterErrorReply) as refused:
            dlt645.parse_ack(await master.relay(A1, dlt645.RelayCommand.TRIP), dlt645.Function.RELAY_CONTROL)
        assert refused.value.error & dlt645.ErrorBits.UNAUTHORISED
        past = meter_clock() - timedelta(minutes=1)
        with pytest.raises(dlt645.MeterErrorReply):
            dlt645.parse_ack(await master.relay(A2, dlt645.RelayCommand.TRIP, past), dlt645.Function.RELAY_CONTROL)
        await asyncio.sleep(0.3)
        assert not sim.meter("E-1").relay_open
        assert not sim.meter("E-2").relay_open


async def test_stuck_relay_acknowledges_but_does_not_move() -> None:
    async with Simulator(estate(faults=[{"kind": "stuck_relay"}])) as sim:
        master = await connect(sim)
        dlt645.parse_ack(await master.relay(A1, dlt645.RelayCommand.TRIP), dlt645.Function.RELAY_CONTROL)
        await asyncio.sleep(0.3)
        assert not sim.meter("E-1").relay_open


@pytest.mark.parametrize("kind", [FaultKind.OFFLINE, FaultKind.BAD_CHECKSUM])
async def test_offline_and_bad_checksum_meters_give_no_usable_reply(kind: FaultKind) -> None:
    async with Simulator(estate()) as sim:
        sim.set_fault("E-1", Fault(kind=kind))
        master = await connect(sim)
        with pytest.raises(TimeoutError):
            await master.read(A1, 0x00010000)
        assert master.parser.rejected == (1 if kind is FaultKind.BAD_CHECKSUM else 0)
        neighbour = await master.read(A2, 0x00010000)  # its neighbour still answers
        assert isinstance(neighbour, Decimal)
        assert neighbour >= Decimal("10.00")


async def test_garbage_before_replies_is_skipped_by_a_resynchronising_parser() -> None:
    async with Simulator(estate(faults=[{"kind": "garbage"}])) as sim:
        master = await connect(sim)
        assert isinstance(await master.read(A1, 0x00010000), Decimal)


async def test_bus_time_follows_the_baud_rate_and_one_transaction_at_a_time() -> None:
    reads = 8
    async with Simulator(estate(baud=2400)) as sim:
        masters = [await connect(sim), await connect(sim)]
        started = time.perf_counter()

        async def poll(master: Master) -> None:
            for _ in range(reads // 2):
                await master.read(A1, 0x00010000)

        await asyncio.gather(*(poll(m) for m in masters))
        elapsed = time.perf_counter() - started
    request, reply = 20, 24  # bytes of a single-DI read and its 4-byte reply at 4 FE preamble
    per_read = (request + reply) * 11 / 2400 + 0.020
    assert elapsed >= reads * per_read * 0.95  # two clients were serialised on one line
    assert elapsed < reads * per_read * 3


def test_consumption_is_deterministic_per_seed_and_zero_at_night_for_water() -> None:
    a = ConsumptionModel(7, "W-1", "water", Profile.RESIDENTIAL)
    b = ConsumptionModel(7, "W-1", "water", Profile.RESIDENTIAL)
    c = ConsumptionModel(8, "W-1", "water", Profile.RESIDENTIAL)
    hours = range(490_000, 490_048)
    assert [a.rate(h) for h in hours] == [b.rate(h) for h in hours]
    assert [a.rate(h) for h in hours] != [c.rate(h) for h in hours]
    night = [h for h in hours if (h + 8) % 24 in (1, 2, 3, 4)]
    assert all(a.rate(h) <= Decimal("0.05") for h in night)  # only an occasional event, no base flow


async def test_a_request_from_a_second_connection_while_the_line_is_busy_is_counted_as_an_overlap() -> None:
    """One master at a time on a half-duplex bus: the simulator serves the second in turn but counts the collision."""
    async with Simulator(estate(baud=1200)) as sim:
        first, second = await connect(sim), await connect(sim)
        await first.read(A1, 0x00010000)
        await second.read(A2, 0x00010000)  # one after the other: no overlap
        assert sim.buses["bus"].stats.overlaps == 0
        both = await asyncio.gather(first.read(A1, 0x00010000), second.read(A2, 0x00010000))
        assert all(isinstance(value, Decimal) for value in both)  # both answered, in turn
        assert sim.buses["bus"].stats.overlaps == 1
