"""Polling: one poller per gateway runs poll cycles over its buses (in parallel, one exchange in flight per
bus), publishes one reading batch per cycle through the local store, tracks device state edge-triggered
and detects a gateway that stopped answering as a whole; commands run in each bus's priority lane."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.drivers import Driver
from shuidian_collector.adapters.store import LocalStore, Message
from shuidian_collector.adapters.transport import COMMAND_PRIORITY, POLL_PRIORITY, Bus, BusGate
from shuidian_collector.domain.commands import CommandOutcome, refused
from shuidian_collector.domain.devices import BusConfig, GatewayConfig, MeterConfig
from shuidian_collector.domain.pollstats import PollTally, ReadObserver, error_kind
from shuidian_collector.domain.schedule import Edge, GatewayHealth, MeterSchedule
from shuidian_collector.domain.states import GATEWAY_OFFLINE_REASON, StateRow
from shuidian_collector.errors import BusError, CommandRejected, StoreFull
from shuidian_protocols.errors import ProtocolError
from shuidian_shared import topics
from shuidian_shared.messages import (
    CommandRequested,
    GatewayStatus,
    Reading,
    ReadingBatch,
)

log = logging.getLogger(__name__)

POLLS = Counter("collector_meter_polls_total", "meter polls", ["outcome"])
CYCLE_SECONDS = Histogram(
    "collector_cycle_seconds", "duration of one gateway poll cycle", buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
)
POLL_LAG = Histogram(
    "collector_poll_lag_seconds",
    "how late a meter was polled after it fell due (keeps up = stays small)",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
GATEWAY_EDGES = Counter("collector_gateway_edges_total", "gateway online/offline edges", ["edge"])


@dataclass(frozen=True)
class PollPolicy:
    max_backoff: float = 3600.0
    gateway_backoff_initial: float = 1.0
    gateway_backoff_max: float = 60.0
    stats_window: float = 60.0  # seconds per PollStats window


class GatewayPoller:
    """Polls every due meter of a gateway and publishes one batch per cycle; probes a dead gateway with
    jittered back-off instead of timing out on every meter behind it."""

    def __init__(
        self,
        gateway: GatewayConfig,
        drivers: dict[str, Driver],
        store: LocalStore,
        states: DeviceStates,
        source: str,
        policy: PollPolicy = PollPolicy(),
        rng: random.Random | None = None,
        health: GatewayHealth | None = None,
        tally: PollTally | None = None,
        gates: dict[tuple[str, int], BusGate] | None = None,
    ) -> None:
        """`gates` (host, port → gate) outlive the poller: the fleet hands them to the poller it rebuilds after a
        registry change, so the old and the new one never talk on the same bus at once."""
        self.gateway = gateway
        self._drivers = drivers
        self._store = store
        self._states = states
        self._source = source
        self._rng = rng or random.Random()
        gates = {} if gates is None else gates
        self.buses = {
            bus.bus_id: Bus(
                bus.bus_id,
                bus.protocol,
                drivers[bus.protocol].open(bus),
                bus.timeout_ms / 1000,
                bus.retries,
                gates.setdefault((bus.host, bus.port), BusGate()),
            )
            for bus in gateway.buses
        }
        self._stopped = False
        self._meters: dict[str, tuple[BusConfig, MeterConfig]] = {
            m.meter_id: (bus, m) for bus in gateway.buses for m in bus.meters
        }
        self.schedule = MeterSchedule(
            {mid: float(m.poll_interval_s) for mid, (_, m) in self._meters.items()},
            max_backoff=policy.max_backoff,
            now=time.monotonic(),
        )
        # Handed over when the fleet rebuilds a poller after a registry change, so that is not an "online" edge.
        self.health = health or GatewayHealth(policy.gateway_backoff_initial, policy.gateway_backoff_max)
        self.tally = tally or PollTally(policy.stats_window, datetime.now(UTC))  # handed over likewise
        self._probe_turn = 0

    def owns(self, meter_id: str) -> bool:
        return meter_id in self._meters

    @property
    def meter_ids(self) -> list[str]:
        return sorted(self._meters)

    async def run(self) -> None:
        try:
            if not self._meters:
                await asyncio.Event().wait()  # nothing to poll, but stay up for the fleet to manage
            while True:
                now = time.monotonic()
                if self.health.online is False:
                    if now >= self.health.retry_at:
                        await self.probe()
                else:
                    due = self.schedule.due(now)
                    if due:
                        await self.poll(due)
                await self.publish_stats()
                wake = self.health.retry_at if self.health.online is False else self.schedule.next_due()
                stats_due = (self.tally.window_end - datetime.now(UTC)).total_seconds()
                await asyncio.sleep(max(min(wake - time.monotonic(), stats_due), 0.01))
        finally:
            self._stopped = True
            for bus in self.buses.values():
                await bus.link.close()

    async def poll(self, meter_ids: list[str]) -> list[Reading]:
        """One cycle: read the given meters (each bus's in turn, buses in parallel), publish one batch."""
        started = time.monotonic()
        for meter_id in meter_ids:
            POLL_LAG.observe(max(started - self.schedule.due_at(meter_id), 0.0))
        results = await asyncio.gather(*(self._read(mid) for mid in meter_ids))
        CYCLE_SECONDS.observe(time.monotonic() - started)
        return await self._settle(list(zip(meter_ids, results, strict=True)))

    async def probe(self) -> list[Reading]:
        """The gateway is offline: try one meter per bus, without retries."""
        picks = []
        for bus in self.gateway.buses:
            if bus.meters:
                picks.append(bus.meters[self._probe_turn % len(bus.meters)].meter_id)
        self._probe_turn += 1
        results = await asyncio.gather(*(self._read(mid, retries=0) for mid in picks))
        return await self._settle(list(zip(picks, results, strict=True)))

    async def _read(self, meter_id: str, retries: int | None = None) -> Reading | BaseException:
        bus_config, meter = self._meters[meter_id]
        bus = self.buses[bus_config.bus_id]
        driver = self._drivers[bus_config.protocol]
        if retries is None and self.schedule.failures(meter_id):
            retries = 0  # a meter already failing gets one probe per attempt, not the full retries
        observer = ReadObserver(self.tally, meter_id)
        try:
            patience = driver.patience(meter)
            channel = bus.channel(
                POLL_PRIORITY, patience.retries if retries is None else retries, patience.timeout, observer
            )
            reading = await driver.read(channel, meter)
        except (BusError, ProtocolError) as err:
            POLLS.labels(error_kind(err)).inc()
            observer.failed(err)
            return err
        except Exception as err:  # a driver bug or a bad profile must not stop the gateway's other meters
            POLLS.labels("other").inc()
            observer.failed(err)
            log.exception("reading meter %s failed unexpectedly", meter_id)
            return err
        POLLS.labels("ok").inc()
        return reading

    async def _settle(self, results: list[tuple[str, Reading | BaseException]]) -> list[Reading]:
        now = time.monotonic()
        readings: list[Reading] = []
        rows: list[StateRow] = []
        for meter_id, result in results:
            if isinstance(result, Reading):
                readings.append(result)
                self.schedule.answered(meter_id, now)
                rows.append(
                    StateRow(meter_id, True, result.relay, result.valve, result.keep_power, result.sampled_at, None)
                )
            else:
                self.schedule.failed(meter_id, now)
                rows.append(StateRow(meter_id, False, None, None, None, None, f"{error_kind(result)}: {result}"))
        gateway_id = self.gateway.gateway_id
        messages: list[Message] = []
        if readings:
            batch = ReadingBatch(source=self._source, gateway_id=gateway_id, readings=tuple(readings))
            # The store numbers the batch in the gateway's stream as it stores it, and serialises it then.
            messages.append(Message(topics.readings(gateway_id), b"", readings=len(readings), batch=batch))
        edge = self.health.observe(
            answered=bool(readings), all_failing=self.schedule.all_failing(), now=now, rng=self._rng
        )
        if edge is Edge.ONLINE and len(results) < len(self._meters):
            self.schedule.restart(now, (m for m in self._meters if m not in {mid for mid, _ in results}))
        if self.health.online is False:
            self.tally.gateway_down()
            # One gateway event instead of one per meter: meters are marked, not announced.
            rows = [StateRow(r.meter_id, False, None, None, None, None, GATEWAY_OFFLINE_REASON) for r in rows]
            messages += self._states.edges(gateway_id, rows, publish=False)
        else:
            messages += self._states.edges(gateway_id, rows)
        if edge is not None:
            messages.append(self._gateway_edge(edge, results))
        try:
            await self._store.append_many(messages)
        except StoreFull as err:
            log.error("gateway %s: %s", gateway_id, err)
        await self._states.write(gateway_id, rows)  # after the readings are safe: the database may be down
        return readings

    async def publish_stats(self) -> None:
        """Publish the last window's PollStats through the local store once it is over (nothing for an empty one)."""
        if self.health.online is False:
            self.tally.gateway_down()
        stats = self.tally.roll(datetime.now(UTC), self.gateway.gateway_id, self._source)
        if stats is None:
            return
        topic = topics.poll_stats(self.gateway.gateway_id)
        try:
            await self._store.append_many([Message(topic, stats.model_dump_json().encode(), bounded=True)])
        except StoreFull as err:
            log.error("gateway %s: poll statistics not kept: %s", self.gateway.gateway_id, err)

    def _gateway_edge(self, edge: Edge, results: list[tuple[str, Reading | BaseException]]) -> Message:
        GATEWAY_EDGES.labels(edge.value).inc()
        online = edge is Edge.ONLINE
        errors = [r for _, r in results if isinstance(r, BaseException)]
        reason = None if online else f"no meter answers ({error_kind(errors[0])}: {errors[0]})" if errors else None
        log.log(
            logging.INFO if online else logging.WARNING,
            "gateway %s is %s%s",
            self.gateway.gateway_id,
            edge.value,
            f" ({reason})" if reason else "",
        )
        status = GatewayStatus(
            source=self._source,
            gateway_id=self.gateway.gateway_id,
            online=online,
            meters=len(self._meters),
            reason=reason,
        )
        return Message(topics.gateway_status(self.gateway.gateway_id), status.model_dump_json().encode(), retain=True)

    async def execute(self, request: CommandRequested) -> CommandOutcome:
        bus_config, meter = self._meters[request.meter_id]
        bus = self.buses[bus_config.bus_id]
        driver = self._drivers[bus_config.protocol]
        patience = driver.patience(meter)
        try:
            return await driver.command(
                bus.channel(COMMAND_PRIORITY, patience.retries, patience.timeout), meter, request
            )
        except CommandRejected as err:  # refused before anything was written: unsupported or rejected, both final
            return refused(err)
        finally:
            if self._stopped:  # replaced while the command ran (on the shared gate): its link is closed again
                await bus.link.close()
