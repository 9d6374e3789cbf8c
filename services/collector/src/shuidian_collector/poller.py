"""Polling: one worker per RS-485 bus (one transaction in flight, commands ahead of polls), one
poll cycle per gateway publishing one reading batch, device state tracked edge-triggered."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.drivers import CommandOutcome, Driver
from shuidian_collector.protocols.common import ProtocolError
from shuidian_collector.registry import BusConfig, GatewayConfig, MeterConfig
from shuidian_collector.transport import BusLink, BusLinkError, BusTimeout
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    CommandRequested,
    CommandResult,
    CommandStatus,
    DeviceState,
    Reading,
    ReadingBatch,
    RelayState,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSACTIONS = Counter("collector_bus_transactions_total", "bus jobs run", ["kind", "outcome"])
JOB_SECONDS = Histogram("collector_bus_job_seconds", "time a bus job held the bus", ["kind"])
COMMAND_PRIORITY, POLL_PRIORITY = 0, 1
MAX_BACKOFF_S = 3600.0


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    kind: str = field(compare=False)
    run: Callable[[BusLink], Awaitable[Any]] = field(compare=False)
    done: asyncio.Future[Any] = field(compare=False)


class BusWorker:
    """Serialises every exchange on one bus; a command waits for at most the transaction in flight."""

    _seq = itertools.count()

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self.link = BusLink(bus.host, bus.port)
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()

    async def submit(self, priority: int, kind: str, run: Callable[[BusLink], Awaitable[T]]) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(priority, next(self._seq), kind, run, done))
        return await done

    async def run(self) -> None:
        try:
            while True:
                job = await self._queue.get()
                if job.done.cancelled():
                    continue
                started = time.perf_counter()
                try:
                    result = await job.run(self.link)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    TRANSACTIONS.labels(job.kind, type(err).__name__).inc()
                    if not job.done.done():
                        job.done.set_exception(err)
                else:
                    TRANSACTIONS.labels(job.kind, "ok").inc()
                    if not job.done.done():
                        job.done.set_result(result)
                finally:
                    JOB_SECONDS.labels(job.kind).observe(time.perf_counter() - started)
        finally:
            await self.link.close()


class DeviceStates:
    """Online/offline and relay state per meter: stored, and published (retained) only when they change."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._source = source
        self._known: dict[str, tuple[bool, RelayState | None, bool | None]] = {}

    async def update(
        self,
        gateway_id: str,
        meter_id: str,
        *,
        online: bool,
        relay: RelayState | None = None,
        keep_power: bool | None = None,
        reading_at: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        previous = self._known.get(meter_id)
        if relay is None and previous is not None:
            relay, keep_power = previous[1], previous[2]
        current = (online, relay, keep_power)
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO collector.device_state (meter_id, online, relay, keep_power, last_reading_at) "
                    "VALUES (:m, :o, :r, :k, :t) ON CONFLICT (meter_id) DO UPDATE SET online = EXCLUDED.online, "
                    "relay = EXCLUDED.relay, keep_power = EXCLUDED.keep_power, "
                    "last_reading_at = coalesce(EXCLUDED.last_reading_at, collector.device_state.last_reading_at), "
                    "updated_at = now()"
                ),
                {"m": meter_id, "o": online, "r": relay.value if relay else None, "k": keep_power, "t": reading_at},
            )
            if current != previous:
                if previous is None or previous[0] != online:
                    log.log(
                        logging.INFO if online else logging.WARNING,
                        "meter %s is %s%s",
                        meter_id,
                        "online" if online else "offline",
                        f" ({reason})" if reason else "",
                    )
                state = DeviceState(
                    source=self._source,
                    meter_id=meter_id,
                    gateway_id=gateway_id,
                    online=online,
                    relay=relay,
                    keep_power=keep_power,
                    last_reading_at=reading_at,
                    reason=reason,
                )
                await self._outbox.add(conn, topics.meter_state(meter_id), state, retain=True)
        if current != previous:
            self._known[meter_id] = current
            self._outbox.notify()


class GatewayPoller:
    """Polls every due meter of a gateway (its buses in parallel) and publishes one batch per cycle."""

    def __init__(
        self,
        gateway: GatewayConfig,
        drivers: dict[str, Driver],
        engine: AsyncEngine,
        outbox: Outbox,
        states: DeviceStates,
        source: str,
    ) -> None:
        self.gateway = gateway
        self.workers = {bus.bus_id: BusWorker(bus) for bus in gateway.buses}
        self._drivers = drivers
        self._engine = engine
        self._outbox = outbox
        self._states = states
        self._source = source
        self._meters = {m.meter_id: (bus, m) for bus in gateway.buses for m in bus.meters}
        self._next_due: dict[str, float] = dict.fromkeys(self._meters, 0.0)
        self._failures: dict[str, int] = dict.fromkeys(self._meters, 0)

    def owns(self, meter_id: str) -> bool:
        return meter_id in self._meters

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for worker in self.workers.values():
                group.create_task(worker.run(), name=f"bus:{worker.bus.bus_id}")
            group.create_task(self._cycles(), name=f"gateway:{self.gateway.gateway_id}")

    async def _cycles(self) -> None:
        if not self._meters:
            return
        while True:
            now = time.monotonic()
            due = [mid for mid, at in self._next_due.items() if at <= now]
            if due:
                await self.poll(due)
            wait = min(self._next_due.values()) - time.monotonic()
            await asyncio.sleep(max(wait, 0.05))

    async def poll(self, meter_ids: list[str]) -> list[Reading]:
        """One cycle: read the given meters, publish their readings as one batch."""
        results = await asyncio.gather(*(self._read(mid) for mid in meter_ids), return_exceptions=True)
        readings: list[Reading] = []
        for meter_id, result in zip(meter_ids, results, strict=True):
            _bus, meter = self._meters[meter_id]
            if isinstance(result, Reading):
                readings.append(result)
                self._failures[meter_id] = 0
                self._next_due[meter_id] = time.monotonic() + meter.poll_interval_s
                await self._states.update(
                    self.gateway.gateway_id,
                    meter_id,
                    online=True,
                    relay=result.relay,
                    keep_power=result.keep_power,
                    reading_at=result.sampled_at,
                )
            elif isinstance(result, (BusTimeout, BusLinkError, ProtocolError)):
                failures = self._failures[meter_id] = self._failures[meter_id] + 1
                # A meter that stopped answering is retried ever less often, so it cannot eat the bus.
                backoff = min(meter.poll_interval_s * 2 ** (failures - 1), MAX_BACKOFF_S)
                self._next_due[meter_id] = time.monotonic() + backoff
                await self._states.update(self.gateway.gateway_id, meter_id, online=False, reason=str(result))
            elif isinstance(result, BaseException):
                raise result
        if readings:
            batch = ReadingBatch(source=self._source, gateway_id=self.gateway.gateway_id, readings=tuple(readings))
            async with self._engine.begin() as conn:
                await self._outbox.add(conn, topics.readings(self.gateway.gateway_id), batch)
            self._outbox.notify()
        return readings

    async def _read(self, meter_id: str) -> Reading:
        bus, meter = self._meters[meter_id]
        driver = self._drivers[bus.protocol]
        return await self.workers[bus.bus_id].submit(POLL_PRIORITY, "poll", lambda link: driver.read(link, meter))

    async def execute(self, request: CommandRequested) -> CommandOutcome:
        bus, meter = self._meters[request.meter_id]
        driver = self._drivers[bus.protocol]
        return await self.workers[bus.bus_id].submit(
            COMMAND_PRIORITY, "command", lambda link: driver.command(link, meter, request.kind, request.expires_at)
        )

    def meter(self, meter_id: str) -> MeterConfig:
        return self._meters[meter_id][1]


class Commands:
    """Executes device commands from control once per command id and publishes their outcome."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, states: DeviceStates, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._states = states
        self._source = source
        self.pollers: dict[str, GatewayPoller] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _poller_for(self, meter_id: str) -> GatewayPoller | None:
        return next((p for p in self.pollers.values() if p.owns(meter_id)), None)

    async def on_command(self, request: CommandRequested, topic: str) -> None:
        poller = self._poller_for(request.meter_id)
        if poller is None:
            return  # another collector instance owns this meter
        async with self._engine.begin() as conn:
            fresh = (
                await conn.execute(
                    text(
                        "INSERT INTO collector.executed_commands (command_id, meter_id, kind, status) "
                        "VALUES (:c, :m, :k, 'received') ON CONFLICT DO NOTHING RETURNING command_id"
                    ),
                    {"c": request.command_id, "m": request.meter_id, "k": request.kind.value},
                )
            ).first()
        if fresh is None:
            log.info("duplicate command %s ignored", request.command_id)
            return
        # Run beside the listener so the next message (maybe another meter's trip) is not held up.
        task = asyncio.create_task(self._execute(poller, request), name=f"command:{request.command_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, poller: GatewayPoller, request: CommandRequested) -> None:
        if request.expires_at <= datetime.now(UTC):
            outcome = CommandOutcome(CommandStatus.EXPIRED, "expired before it could be sent")
        else:
            try:
                outcome = await poller.execute(request)
            except (BusTimeout, BusLinkError, ProtocolError) as err:
                outcome = CommandOutcome(CommandStatus.FAILED, f"no valid answer from the meter: {err}")
        await self._finish(poller.gateway.gateway_id, request, outcome)

    async def _finish(self, gateway_id: str, request: CommandRequested, outcome: CommandOutcome) -> None:
        result = CommandResult(
            source=self._source,
            command_id=request.command_id,
            meter_id=request.meter_id,
            kind=request.kind,
            status=outcome.status,
            detail=outcome.detail,
            relay=outcome.relay,
            valve=outcome.valve,
            request_frame=outcome.request_frame.hex(" ").upper() if outcome.request_frame else None,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE collector.executed_commands SET status = :s, detail = :d, finished_at = now() "
                    "WHERE command_id = :c"
                ),
                {"s": outcome.status.value, "d": outcome.detail, "c": request.command_id},
            )
            await self._outbox.add(conn, topics.command_result(request.meter_id), result)
        self._outbox.notify()
        log.info(
            "command %s %s on %s: %s", request.command_id, request.kind.value, request.meter_id, outcome.status.value
        )
        if outcome.relay is not None:
            await self._states.update(gateway_id, request.meter_id, online=True, relay=outcome.relay)
