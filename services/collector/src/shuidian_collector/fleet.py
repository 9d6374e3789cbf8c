"""Keeps one poller per owned gateway in step with the registry: changes apply without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.drivers import Driver
from shuidian_collector.poller import Commands, DeviceStates, GatewayPoller
from shuidian_collector.registry import GatewayConfig, Registry
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.outbox import Outbox

log = logging.getLogger(__name__)


class Fleet:
    def __init__(
        self,
        registry: Registry,
        settings: CollectorSettings,
        drivers: dict[str, Driver],
        engine: AsyncEngine,
        outbox: Outbox,
        states: DeviceStates,
        commands: Commands,
        source: str,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._drivers = drivers
        self._engine = engine
        self._outbox = outbox
        self._states = states
        self._commands = commands
        self._source = source
        self._running: dict[str, tuple[GatewayConfig, asyncio.Task[None]]] = {}
        self._refresh = asyncio.Event()

    def refresh(self) -> None:
        """Re-read the registry now (called after every registry write)."""
        self._refresh.set()

    async def run(self) -> None:
        try:
            while True:
                self._refresh.clear()
                await self._apply(await self._registry.load(self._settings.shard_index, self._settings.shard_count))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._refresh.wait(), self._settings.registry_refresh_seconds)
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
        for gateway_id, config in wanted.items():
            if gateway_id in self._running:
                continue
            unsupported = {b.protocol for b in config.buses} - set(self._drivers)
            if unsupported:
                log.warning("gateway %s: no driver for %s; those buses are skipped", gateway_id, sorted(unsupported))
                config = GatewayConfig(gateway_id, tuple(b for b in config.buses if b.protocol in self._drivers))
            poller = GatewayPoller(config, self._drivers, self._engine, self._outbox, self._states, self._source)
            self._commands.pollers[gateway_id] = poller
            self._running[gateway_id] = (wanted[gateway_id], asyncio.create_task(poller.run(), name=f"gw:{gateway_id}"))
            log.info("polling gateway %s (%d meters)", gateway_id, sum(len(b.meters) for b in config.buses))
