"""The half-duplex line: a priority gate that lets exactly one exchange onto a bus at a time, the TCP
link to one RS-485 bus behind a transparent gateway, and the bus metrics.

Failures are `BusError`s (`errors.py`: `BusTimeout`, `BusGarbled`, `BusLinkError`); protocol-level refusals
(`ProtocolError`/`DeviceError` from the codecs) pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from prometheus_client import Counter, Histogram

from shuidian_collector.domain.pollstats import error_kind
from shuidian_collector.errors import BusError, BusGarbled, BusLinkError, BusTimeout
from shuidian_protocols.errors import ProtocolError

log = logging.getLogger(__name__)

F = TypeVar("F")
T = TypeVar("T")

COMMAND_PRIORITY, POLL_PRIORITY = 0, 1
_JOBS = itertools.count()  # order of jobs on a bus: an earlier job's exchanges go before a later one's

TRANSACTIONS = Counter("collector_bus_transactions_total", "request/reply exchanges on a bus", ["protocol", "outcome"])
ERRORS = Counter("collector_bus_errors_total", "failed exchanges by kind", ["protocol", "kind"])
LATENCY = Histogram(
    "collector_bus_transaction_seconds",
    "time one exchange held the bus",
    ["protocol", "lane"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
BUSY = Counter(
    "collector_bus_busy_seconds_total", "seconds a bus was held by an exchange (utilisation = rate)", ["bus"]
)
STALE = Counter(
    "collector_bus_stale_bytes_total", "bytes already waiting on a bus link before a request (late replies), discarded"
)


class BusGate:
    """A priority lock for one bus: the waiter with the smallest key goes next, so a command (priority 0)
    takes the line as soon as the exchange in flight ends.

    One gate per physical bus for the life of the process: a poller rebuilt after a registry change takes
    over its predecessor's gate, so the two never have exchanges in flight on the line at once. An exchange
    abandoned half-way (its task cancelled after the request went out) leaves the line busy until its
    timeout: `hold_until` makes the next holder wait that out before it sends."""

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._quiet_at = 0.0  # loop time before which the line may still carry an abandoned exchange's reply

    def hold_until(self, at: float) -> None:
        """The line is not free before loop time `at`, whoever holds the gate."""
        self._quiet_at = max(self._quiet_at, at)

    @property
    def waiting(self) -> int:
        return sum(1 for *_, fut in self._waiters if not fut.done())

    @contextlib.asynccontextmanager
    async def turn(self, key: tuple[int, int]) -> AsyncIterator[None]:
        if self._busy or self._waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (key, next(self._order), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # the turn was handed to us as we were cancelled: pass it on
                else:
                    fut.cancel()
                raise
        else:
            self._busy = True
        try:
            quiet_in = self._quiet_at - asyncio.get_running_loop().time()
            if quiet_in > 0:
                await asyncio.sleep(quiet_in)
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._busy = False


class FrameParser(Protocol[F]):
    rejected: int
    last_error: ProtocolError | None

    def feed(self, chunk: bytes) -> list[F]: ...


class Link(Protocol):
    async def close(self) -> None: ...


class BusLink:
    """A TCP socket to a byte-oriented bus (DL/T 645, CJ/T 188); callers hold the bus gate."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 3.0) -> None:
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._writer.is_closing():
            return self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self._connect_timeout
            )
        except (OSError, TimeoutError) as err:
            raise BusLinkError(f"cannot reach gateway {self.host}:{self.port}: {err}") from err
        self._reader, self._writer = reader, writer
        return reader, writer

    async def exchange(self, request: bytes, parser: FrameParser[F], accept: Callable[[F], bool], timeout: float) -> F:
        """Send `request` and return the first parsed frame that `accept` takes.

        A late reply to an earlier, timed-out request is either already waiting on the link, and discarded
        before the request goes out, or arrives after it and is skipped by `accept` (the caller checks
        address, function and data identifier or sequence number); it is never taken for this answer.
        """
        reader, writer = await self._connect()
        try:
            if not await self._discard_waiting(reader):  # the gateway closed the idle connection: a new one
                await self.close()
                reader, writer = await self._connect()
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise BusLinkError("gateway closed the connection")
                    for frame in parser.feed(chunk):
                        if accept(frame):
                            return frame
        except TimeoutError as err:
            if parser.rejected:
                raise BusGarbled(
                    f"no valid reply within {timeout:.2f}s ({parser.rejected} bad frame(s))", cause=parser.last_error
                ) from err
            raise BusTimeout(f"no reply within {timeout:.2f}s") from err
        except (OSError, BusLinkError) as err:
            await self.close()
            raise BusLinkError(str(err)) from err

    async def _discard_waiting(self, reader: asyncio.StreamReader) -> bool:
        """Drop whatever arrived since the last exchange ended: it answers a request that already timed out.
        False if the gateway has closed the connection meanwhile."""
        stale = 0
        while True:
            try:
                # A zero timeout returns what is buffered already and gives the loop one turn to take in what
                # the socket holds, without waiting for anything more.
                async with asyncio.timeout(0):
                    chunk = await reader.read(4096)
            except TimeoutError:
                break
            if not chunk:
                return False
            stale += len(chunk)
        if stale:
            STALE.inc(stale)
            log.info(
                "gateway %s:%d: %d byte(s) of a late reply discarded before the next request",
                self.host,
                self.port,
                stale,
            )
        return True

    async def send(self, request: bytes) -> None:
        """Send a frame nobody answers (a broadcast); the gateway puts it on the line before any later request."""
        _, writer = await self._connect()
        try:
            writer.write(request)
            await writer.drain()
        except OSError as err:
            await self.close()
            raise BusLinkError(str(err)) from err

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@dataclass
class Bus:
    """One RS-485 bus as the scheduler sees it: its gate, its link and how patient to be."""

    bus_id: str
    protocol: str
    link: Link
    timeout: float
    retries: int
    gate: BusGate = field(default_factory=BusGate)

    def channel(
        self,
        priority: int,
        retries: int | None = None,
        timeout: float | None = None,
        observe: Observer | None = None,
    ) -> Channel:
        """A handle for one job (one meter read or one command): its exchanges keep their place in line.
        `retries` and `timeout` override the bus's for this job (a meter model's own patience); `observe` hears
        of every exchange (None: answered, else the error), retries included."""
        return Channel(
            self,
            (priority, next(_JOBS)),
            self.retries if retries is None else retries,
            self.timeout if timeout is None else timeout,
            observe,
        )


Observer = Callable[[BaseException | None], None]


@dataclass
class Channel:
    bus: Bus
    key: tuple[int, int]
    retries: int
    timeout: float
    observe: Observer | None = None

    async def transact(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one exchange on the bus when it is this job's turn; retry timeouts and garbled replies."""
        lane = "command" if self.key[0] == COMMAND_PRIORITY else "poll"
        attempt = 0
        while True:
            async with self.bus.gate.turn(self.key):
                started = time.perf_counter()
                sent_at = asyncio.get_running_loop().time()
                try:
                    result = await operation()
                except asyncio.CancelledError:
                    # The request may be on the line and its reply still to come: whoever takes the gate next
                    # (a rebuilt poller, a command) waits until this exchange would have timed out.
                    self.bus.gate.hold_until(sent_at + self.timeout)
                    raise
                except (BusError, ProtocolError) as err:
                    kind = error_kind(err)
                    TRANSACTIONS.labels(self.bus.protocol, kind).inc()
                    ERRORS.labels(self.bus.protocol, kind).inc()
                    if self.observe is not None:
                        self.observe(err)
                    retry = isinstance(err, (BusTimeout, BusGarbled)) and attempt < self.retries
                    if not retry:
                        raise
                else:
                    TRANSACTIONS.labels(self.bus.protocol, "ok").inc()
                    if self.observe is not None:
                        self.observe(None)
                    return result
                finally:
                    held = time.perf_counter() - started
                    LATENCY.labels(self.bus.protocol, lane).observe(held)
                    BUSY.labels(self.bus.bus_id).inc(held)
            attempt += 1
