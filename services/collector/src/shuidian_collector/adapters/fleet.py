"""Keeps one poller per owned gateway in step with the registry: changes apply without a restart, the old
poller stopped (its connections closed) before the new one starts, both behind the same gate per bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shuidian_collector.adapters.command_executor import Commands
from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.drivers import Driver
from shuidian_collector.adapters.poller import GatewayPoller, PollPolicy
from shuidian_collector.adapters.registry import Registry
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.adapters.transport import BusGate
from shuidian_collector.domain.devices import GatewayConfig
from shuidian_collector.domain.pollstats import PollTally
from shuidian_collector.domain.schedule import GatewayHealth
from shuidian_collector.settings import CollectorSettings

log = logging.getLogger(__name__)


class Fleet:
    def __init__(
        self,
        registry: Registry,
        settings: CollectorSettings,
        drivers: dict[str, Driver],
        store: LocalStore,
        states: DeviceStates,
        commands: Commands,
        source: str,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._drivers = drivers
        self._store = store
        self._states = states
        self._commands = commands
        self._source = source
        self._policy = PollPolicy(
            settings.max_backoff_seconds,
            settings.gateway_backoff_initial_seconds,
            settings.gateway_backoff_max_seconds,
            settings.poll_stats_window_seconds,
        )
        self._running: dict[str, tuple[GatewayConfig, asyncio.Task[None]]] = {}
        self._refresh = asyncio.Event()
        self._health: dict[str, GatewayHealth] = {}
        self._tallies: dict[str, PollTally] = {}
        # One gate per bus endpoint (host, port) for as long as the process runs: a rebuilt poller waits for the
        # line its predecessor (or a command it was running) may still be using.
        self._gates: dict[tuple[str, int], BusGate] = {}

    @property
    def pollers(self) -> dict[str, GatewayPoller]:
        return self._commands.pollers

    def refresh(self) -> None:
        """Re-read the registry now (called after every registry write)."""
        self._refresh.set()

    async def run(self) -> None:
        try:
            while True:
                self._refresh.clear()
                try:
                    wanted = await self._registry.load(
                        self._settings.shard_index, self._settings.shard_count, frozenset(self._settings.gateways)
                    )
                except Exception as err:  # the database may be down: keep polling what we have
                    log.warning("registry not reloaded: %s", err)
                else:
                    await self._apply(wanted)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as the
                # event is set (a registry write just before shutdown), and the fleet would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.registry_refresh_seconds):
                        await self._refresh.wait()
        finally:
            for _, task in self._running.values():
                task.cancel()
            await asyncio.gather(*(task for _, task in self._running.values()), return_exceptions=True)

    async def _apply(self, wanted: dict[str, GatewayConfig]) -> None:
        for gateway_id, (config, task) in list(self._running.items()):
            if wanted.get(gateway_id) != config or task.done():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("poller of gateway %s died: %s; restarting", gateway_id, task.exception())
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                del self._running[gateway_id]
                self._commands.pollers.pop(gateway_id, None)
                if gateway_id not in wanted:
                    self._health.pop(gateway_id, None)
                    self._tallies.pop(gateway_id, None)
        for gateway_id, config in wanted.items():
            if gateway_id in self._running:
                continue
            unsupported = {b.protocol for b in config.buses} - set(self._drivers)
            if unsupported:
                log.warning("gateway %s: no driver for %s; those buses are skipped", gateway_id, sorted(unsupported))
                config = GatewayConfig(gateway_id, tuple(b for b in config.buses if b.protocol in self._drivers))
            poller = GatewayPoller(
                config,
                self._drivers,
                self._store,
                self._states,
                self._source,
                self._policy,
                health=self._health.get(gateway_id),
                tally=self._tallies.get(gateway_id),  # a rebuilt poller keeps the window's counts
                gates=self._gates,
            )
            self._health[gateway_id] = poller.health
            self._tallies[gateway_id] = poller.tally
            self._commands.pollers[gateway_id] = poller
            self._running[gateway_id] = (wanted[gateway_id], asyncio.create_task(poller.run(), name=f"gw:{gateway_id}"))
            log.info("polling gateway %s (%d meters)", gateway_id, sum(len(b.meters) for b in config.buses))
