"""A simulated RS-485 bus behind a transparent gateway port: one TCP server, one transaction at a
time, characters timed at the bus baud rate (11 bits each, 8E1), meters answering by address.

Every protocol server (DL/T 645, CJ/T 188, Modbus) cuts requests out of its TCP stream and hands each
one to `SimBus.transact`, so timing, faults and the wire log are the same mechanism for all of them;
a `LineDiscipline` says only what differs: how long a frame is on the line and how to spoil a checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from shuidian_protocols.errors import ProtocolError
from shuidian_simulator.domain.meter import SimClock, SimMeter
from shuidian_simulator.estate import BusSpec, Fault, FaultKind

log = logging.getLogger(__name__)
WIRE_LOG_LIMIT = 5000
BITS_PER_CHAR = 11
LINE_NOISE = bytes([0x00, 0x68, 0x55, 0xE3])
# What a meter answering only noise puts on the line: a 68 … 68 header (so a DL/T 645 or CJ/T 188 master takes it for
# a frame start) with an impossible length byte, then nothing that completes a frame.
NOISE_REPLY = bytes([0x68, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0x68, 0x91, 0xFF, 0xFF, 0xE3, 0x16])


def _last_before_end_byte(frame: bytes) -> bytes:
    """DL/T 645 and CJ/T 188: the checksum is the byte before the final 16."""
    return frame[:-2] + bytes([(frame[-2] + 1) & 0xFF]) + frame[-1:]


def _no_gap(baud: int) -> float:
    return 0.0


@dataclass(frozen=True)
class LineDiscipline:
    """What a protocol's frames look like on the RS-485 line behind the gateway."""

    corrupt: Callable[[bytes], bytes] = _last_before_end_byte
    line_length: Callable[[bytes], int] = len  # characters a frame takes on the line
    silent_interval: Callable[[int], float] = _no_gap  # seconds of silence after a frame, by baud rate


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - loop.time()))


Handler = Callable[["SimBus", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class BusStats:
    transactions: int = 0
    answered: int = 0
    # Requests that reached the line while another connection's exchange held it: on a real RS-485 bus they
    # collide with that exchange (a master must never have two in flight); here they wait their turn, counted.
    overlaps: int = 0
    busy_seconds: float = 0.0  # line time spent on frames and reply delays
    first_at: float = field(default_factory=time.time)


class SimBus:
    """Shared by every connection to the bus port: the lock is the half-duplex line. A request from one connection
    while another's exchange holds the line is an overlap, which a real bus would garble: counted and logged."""

    def __init__(
        self,
        spec: BusSpec,
        meters: dict[str, SimMeter],
        host: str,
        *,
        clock: SimClock | None = None,
        gateway_faults: Sequence[Fault] = (),
        wire_log_limit: int = WIRE_LOG_LIMIT,
    ) -> None:
        self.spec = spec
        self.meters = meters  # by protocol address at start; `meter_at` follows address changes
        self.host = host
        self.port = 0
        self.clock = clock
        self.gateway_faults = tuple(gateway_faults)
        self.wire: deque[tuple[float, str, bytes]] = deque(maxlen=wire_log_limit)
        self.line = asyncio.Lock()
        self._holder: asyncio.StreamWriter | None = None  # the connection whose exchange is on the line
        self.online = True  # switched by the control API; scheduled gateway faults apply on top
        self.stats = BusStats()
        self.discipline = LineDiscipline()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def transactions(self) -> int:
        return self.stats.transactions

    def char_time(self, count: float) -> float:
        return count * BITS_PER_CHAR / self.spec.baud

    def frame_time(self, frame: bytes) -> float:
        """Seconds a frame occupies the line, its silent interval included."""
        return self.char_time(self.discipline.line_length(frame)) + self.discipline.silent_interval(self.spec.baud)

    def up(self) -> bool:
        """Whether the gateway is powered: not switched off and in no scheduled outage."""
        if not self.online:
            return False
        if self.clock is None or not self.gateway_faults:
            return True
        elapsed = self.clock.sim_elapsed()
        return not any(f.active(elapsed) for f in self.gateway_faults)

    def meter_at(self, address: str) -> SimMeter | None:
        """The meter answering to `address` now (a replaced meter may have taken a new one)."""
        meter = self.meters.get(address)
        if meter is not None and meter.address == address:
            return meter
        return next((m for m in self.meters.values() if m.address == address), None)

    async def start(self, handler: Handler, discipline: LineDiscipline | None = None) -> None:
        if discipline is not None:
            self.discipline = discipline

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self.up():
                writer.close()
                return
            self._writers.add(writer)
            try:
                await handler(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        self._server = await asyncio.start_server(on_connect, self.host, self.spec.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def set_online(self, online: bool) -> None:
        """Gateway power: offline drops every connection and refuses new ones."""
        self.online = online
        if not online:
            self._drop_all()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def transact(
        self,
        writer: asyncio.StreamWriter,
        request: bytes,
        meter: SimMeter | None,
        reply: Callable[[], bytes | None],
    ) -> None:
        """Put `request` on the line, let the meter think, put its reply on the line."""
        if self._holder is not None and self._holder is not writer:
            self.stats.overlaps += 1
            log.warning(
                "bus %s: a request arrived on a second connection while another's exchange was on the line "
                "(%d overlap(s) so far)",
                self.spec.id,
                self.stats.overlaps,
            )
        async with self.line:
            self._holder = writer
            try:
                await self._exchange(writer, request, meter, reply)
            finally:
                self._holder = None

    async def _exchange(
        self,
        writer: asyncio.StreamWriter,
        request: bytes,
        meter: SimMeter | None,
        reply: Callable[[], bytes | None],
    ) -> None:
        """The exchange itself, with the line held."""
        if not self.up():
            self._drop_all()  # a scheduled outage began: the gateway's TCP side goes away
            return
        self.wire.append((time.time(), "rx", request))
        self.stats.transactions += 1
        # Deadlines count from when the line was taken, so our own processing hides inside the
        # emulated line time instead of adding to it.
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_time = self.frame_time(request)
        if meter is None or not meter.answers():
            self.stats.busy_seconds += request_time
            await asyncio.sleep(request_time)
            return  # nobody answers: the master times out
        delay = self.spec.reply_delay_ms / 1000
        slow = meter.fault(FaultKind.SLOW)
        if slow is not None:
            delay += slow.delay_ms / 1000
        await _sleep_until(loop, started + request_time + delay)
        try:
            answer = reply()
        except (ProtocolError, ValueError):
            # A value the meter cannot put in its reply (out of the register's range): it stays silent.
            log.exception("bus %s: meter %s could not build its reply", self.spec.id, meter.spec.id)
            answer = None
        if answer is None:
            self.stats.busy_seconds += request_time + delay
            return
        if meter.noisy():
            answer = NOISE_REPLY
        if meter.fault(FaultKind.GARBAGE) is not None:
            answer = LINE_NOISE + answer
        if meter.fault(FaultKind.BAD_CHECKSUM) is not None:
            answer = self.discipline.corrupt(answer)
        answer_time = self.frame_time(answer)
        self.stats.busy_seconds += request_time + delay + answer_time
        self.stats.answered += 1
        await _sleep_until(loop, started + request_time + delay + answer_time)
        self.wire.append((time.time(), "tx", answer))
        writer.write(answer)
        await writer.drain()
