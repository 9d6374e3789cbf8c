"""Late replies: a meter that answers after the collector gave up on it must never have that answer taken for
the next request's. Small hand-written peers on real loopback sockets, speaking real DL/T 645 and CJ/T 188
bytes built with our codecs, answer late on purpose (the simulator's meters always answer in turn)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal

import pytest

from shuidian_collector.adapters.drivers.cjt188 import Cjt188Driver
from shuidian_collector.adapters.drivers.dlt645 import (
    DI_ENERGY_FORWARD_BLOCK,
    DI_REMAINING_MONEY,
    DI_STATUS_WORD_3,
    Dlt645Driver,
)
from shuidian_collector.adapters.transport import POLL_PRIORITY, Bus, BusLink
from shuidian_collector.domain.devices import MeterConfig
from shuidian_collector.errors import BusTimeout
from shuidian_protocols import cjt188, dlt645
from shuidian_shared.messages import ReadingFlag, Utility

pytestmark = pytest.mark.integration

ADDRESS = "000000000001"
WATER_ADDRESS = "00000000000001"
# request number (from 1), request frame → (seconds to wait, reply bytes) to send, in order
Script = Callable[[int, bytes], list[tuple[float, bytes]]]


class Peer:
    """A gateway port with one meter behind it that follows a script; records when it sent what."""

    def __init__(self, script: Script, cut: Callable[[bytes], list[bytes]]) -> None:
        self.script = script
        self.cut = cut
        self.requests = 0
        self.sent = asyncio.Event()  # set after every reply written
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _reply(self, writer: asyncio.StreamWriter, replies: list[tuple[float, bytes]]) -> None:
        for delay, reply in replies:
            await asyncio.sleep(delay)
            writer.write(reply)
            await writer.drain()
            self.sent.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(4096):
                for request in self.cut(chunk):
                    self.requests += 1
                    task = asyncio.create_task(self._reply(writer, self.script(self.requests, request)))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            writer.close()

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        assert self._server is not None
        self._server.close()


def _dlt645_frames(chunk: bytes) -> list[bytes]:
    parser = dlt645.StreamParser()  # the collector sends each request whole, in one write
    return [dlt645.encode_frame(frame) for frame in parser.feed(chunk)]


def _di(request: bytes) -> int:
    decoded = dlt645.decode_request(dlt645.decode_frame(request))
    assert isinstance(decoded, dlt645.ReadRequest), decoded
    return decoded.di


def _energy(total: str) -> bytes:
    value = (Decimal(total), Decimal(0), Decimal(0), Decimal(0), Decimal(0))
    return dlt645.encode_read_reply(
        ADDRESS, DI_ENERGY_FORWARD_BLOCK, dlt645.encode_value(DI_ENERGY_FORWARD_BLOCK, value)
    )


NO_DATA = dlt645.encode_error_reply(ADDRESS, dlt645.Function.READ, dlt645.ErrorBits.NO_DATA)
STATUS = dlt645.encode_read_reply(
    ADDRESS, DI_STATUS_WORD_3, dlt645.encode_value(DI_STATUS_WORD_3, dlt645.StatusWord3())
)
MONEY = dlt645.encode_read_reply(ADDRESS, DI_REMAINING_MONEY, dlt645.encode_value(DI_REMAINING_MONEY, Decimal("50.00")))
METER = MeterConfig("E-late", ADDRESS, "dlt645-prepaid", Utility.ELECTRICITY, 60)


@pytest.fixture
async def bus_to() -> AsyncIterator[Callable[[Peer], Bus]]:
    buses: list[Bus] = []

    def make(peer: Peer) -> Bus:
        bus = Bus("bus-late", "dlt645", BusLink("127.0.0.1", peer.port), timeout=0.3, retries=0)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.link.close()


async def test_a_late_reply_waiting_on_the_link_is_not_the_next_answer(bus_to: Callable[[Peer], Bus]) -> None:
    """The first energy read is answered (1.00 kWh) after the collector gave up; the next one is answered at once
    (2.00 kWh). The late 1.00 sits on the link when the next request goes out and must be thrown away."""

    def script(n: int, request: bytes) -> list[tuple[float, bytes]]:
        di = _di(request)
        if di == DI_ENERGY_FORWARD_BLOCK:
            return [(0.6, _energy("1.00"))] if n == 1 else [(0.0, _energy("2.00"))]
        return [(0.0, STATUS if di == DI_STATUS_WORD_3 else MONEY if di == DI_REMAINING_MONEY else NO_DATA)]

    async with Peer(script, _dlt645_frames) as peer:
        bus = bus_to(peer)
        driver = Dlt645Driver(timezone="Asia/Shanghai")
        with pytest.raises(BusTimeout):
            await driver.read(bus.channel(POLL_PRIORITY), METER)
        await peer.sent.wait()  # the late answer is on its way
        await asyncio.sleep(0.1)
        reading = await driver.read(bus.channel(POLL_PRIORITY), METER)
    assert reading.registers["energy_active_import_total"] == Decimal("2.00")
    assert reading.registers["balance_money"] == Decimal("50.00")  # and later answers are not shifted by one
    assert ReadingFlag.PARTIAL not in reading.flags


async def test_a_late_reply_for_another_di_is_skipped_and_the_right_one_awaited(
    bus_to: Callable[[Peer], Bus],
) -> None:
    """The status word is answered only when the money request is already out, just before the money answer:
    the late status must be skipped, not taken for (and refused as) the money."""

    def script(n: int, request: bytes) -> list[tuple[float, bytes]]:
        di = _di(request)
        if di == DI_ENERGY_FORWARD_BLOCK:
            return [(0.0, _energy("2.00"))]
        if di == DI_STATUS_WORD_3:
            return []  # held until the next request
        if di == DI_REMAINING_MONEY:
            return [(0.0, STATUS), (0.0, MONEY)]
        return [(0.0, NO_DATA)]

    async with Peer(script, _dlt645_frames) as peer:
        reading = await Dlt645Driver(timezone="Asia/Shanghai").read(bus_to(peer).channel(POLL_PRIORITY), METER)
    assert reading.registers["balance_money"] == Decimal("50.00")
    assert reading.relay is None  # the status word itself timed out
    assert ReadingFlag.PARTIAL in reading.flags


def _cjt188_frames(chunk: bytes) -> list[bytes]:
    return [cjt188.encode_frame(frame) for frame in cjt188.StreamParser().feed(chunk)]


def _water(volume: str, seq: int) -> bytes:
    return cjt188.encode_current_data_reply(
        WATER_ADDRESS,
        cjt188.MeterType.COLD_WATER,
        cumulative=Decimal(volume),
        unit=cjt188.Unit.M3,
        settlement=Decimal(volume),
        settlement_unit=cjt188.Unit.M3,
        meter_time=datetime(2026, 1, 1, 12, 0, 0),  # noqa: DTZ001 - meter-local wall clock
        status_raw=0,
        seq=seq,
        order=cjt188.DiOrder.V2004,
    )


async def test_a_late_water_reading_with_an_old_sequence_number_is_skipped(bus_to: Callable[[Peer], Bus]) -> None:
    """CJ/T 188 replies echo the request's SER: the late answer to the first read (12.00 m³) arrives while the second
    read waits, just before its own (13.00 m³), and is told apart by its sequence number."""

    def script(n: int, request: bytes) -> list[tuple[float, bytes]]:
        seq = cjt188.decode_frame(request).data[2]
        if n == 1:
            return []  # held
        return [(0.0, _water("12.00", (seq - 1) & 0xFF)), (0.0, _water("13.00", seq))]

    async with Peer(script, _cjt188_frames) as peer:
        bus = bus_to(peer)
        driver = Cjt188Driver()
        meter = MeterConfig("W-late", WATER_ADDRESS, "cjt188-generic", Utility.WATER, 60)
        with pytest.raises(BusTimeout):
            await driver.read(bus.channel(POLL_PRIORITY), meter)
        reading = await driver.read(bus.channel(POLL_PRIORITY), meter)
    assert reading.registers["water_volume_total"] == Decimal("13.00")


async def test_a_connection_the_gateway_closed_while_idle_is_opened_again_before_the_request() -> None:
    """Checking the link for late bytes before a request also finds a gateway that dropped the idle connection."""
    connections = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        parser = dlt645.StreamParser()
        while not (frames := parser.feed(await reader.read(4096))):
            pass
        request = dlt645.decode_request(frames[0])
        assert isinstance(request, dlt645.ReadRequest)
        writer.write(dlt645.encode_read_reply(ADDRESS, request.di, dlt645.encode_value(request.di, Decimal("7.00"))))
        await writer.drain()
        writer.close()  # as a gateway with an idle timeout would, a little later

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    link = BusLink("127.0.0.1", server.sockets[0].getsockname()[1])
    request = dlt645.read_request(ADDRESS, 0x00010000)
    try:
        for _ in range(2):
            reply = await link.exchange(request, dlt645.StreamParser(), lambda frame: frame.is_reply, 1.0)
            assert dlt645.decode_value(0x00010000, dlt645.parse_read_reply(reply, 0x00010000)) == Decimal("7.00")
            await asyncio.sleep(0.1)  # the gateway's close arrives
    finally:
        await link.close()
        server.close()
    assert connections == 2
