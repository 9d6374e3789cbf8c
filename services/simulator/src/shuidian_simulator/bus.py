"""A simulated RS-485 bus behind a transparent gateway port: one TCP server, one transaction at a
time, characters timed at the bus baud rate (11 bits each, 8E1), meters answering by address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from shuidian_simulator.estate import BusSpec, FaultKind
from shuidian_simulator.meter import SimMeter

log = logging.getLogger(__name__)
WIRE_LOG_LIMIT = 5000
BITS_PER_CHAR = 11


class SimBus:
    """Shared by every connection to the bus port: the lock is the half-duplex line."""

    def __init__(self, spec: BusSpec, meters: dict[str, SimMeter], host: str) -> None:
        self.spec = spec
        self.meters = meters  # by protocol address
        self.host = host
        self.port = 0
        self.wire: deque[tuple[float, str, bytes]] = deque(maxlen=WIRE_LOG_LIMIT)
        self.line = asyncio.Lock()
        self.online = True
        self.transactions = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def char_time(self, count: int) -> float:
        return count * BITS_PER_CHAR / self.spec.baud

    async def start(self, handler: Callable[[SimBus, asyncio.StreamReader, asyncio.StreamWriter], object]) -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self.online:
                writer.close()
                return
            self._writers.add(writer)
            try:
                await handler(self, reader, writer)  # type: ignore[misc]
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
            for writer in list(self._writers):
                writer.close()

    async def transact(
        self, writer: asyncio.StreamWriter, request: bytes, meter: SimMeter | None, reply: Callable[[], bytes | None]
    ) -> None:
        """Put `request` on the line, let the meter think, put its reply on the line."""
        async with self.line:
            self.wire.append((time.time(), "rx", request))
            self.transactions += 1
            await asyncio.sleep(self.char_time(len(request)))
            if meter is None or FaultKind.OFFLINE in meter.faults:
                return  # nobody answers: the master times out
            delay = self.spec.reply_delay_ms / 1000
            slow = meter.faults.get(FaultKind.SLOW)
            if slow is not None:
                delay += slow.delay_ms / 1000
            await asyncio.sleep(delay)
            answer = reply()
            if answer is None:
                return
            if FaultKind.GARBAGE in meter.faults:
                answer = bytes([0x00, 0x68, 0x55, 0xE3]) + answer
            if FaultKind.BAD_CHECKSUM in meter.faults:
                answer = answer[:-2] + bytes([(answer[-2] + 1) & 0xFF]) + answer[-1:]
            await asyncio.sleep(self.char_time(len(answer)))
            self.wire.append((time.time(), "tx", answer))
            writer.write(answer)
            await writer.drain()
