"""Device commands from control: each (command id, attempt) is executed at most once, in the owning bus's
priority lane; a redelivered duplicate republishes the stored result; an expired one never touches the wire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.poller import GatewayPoller
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.domain.commands import CommandOutcome
from shuidian_collector.domain.pollstats import error_kind
from shuidian_collector.domain.states import StateRow
from shuidian_collector.errors import BusError
from shuidian_kit.outbox import Outbox
from shuidian_protocols.errors import ProtocolError
from shuidian_shared import topics
from shuidian_shared.messages import CommandRequested, CommandResult, CommandStatus

log = logging.getLogger(__name__)

COMMANDS = Counter("collector_commands_total", "device commands by outcome", ["kind", "status"])
DUPLICATES = Counter("collector_commands_duplicate_total", "redelivered commands not executed again")


class Commands:
    """Listens for CommandRequested; `pollers` is the fleet's current gateway → poller map."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        states: DeviceStates,
        store: LocalStore,
        source: str,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._store = store
        self._outbox = outbox
        self._states = states
        self._source = source
        self._now = now
        self.pollers: dict[str, GatewayPoller] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _poller_for(self, meter_id: str) -> GatewayPoller | None:
        return next((p for p in self.pollers.values() if p.owns(meter_id)), None)

    async def on_command(self, request: CommandRequested, topic: str) -> None:
        poller = self._poller_for(request.meter_id)
        if poller is None:
            return  # another collector instance owns this meter's gateway
        async with self._engine.begin() as conn:
            fresh = (
                await conn.execute(
                    text(
                        "INSERT INTO collector.executed_commands (command_id, attempt, meter_id, kind, status) "
                        "VALUES (:c, :a, :m, :k, 'received') ON CONFLICT DO NOTHING RETURNING command_id"
                    ),
                    {"c": request.command_id, "a": request.attempt, "m": request.meter_id, "k": request.kind.value},
                )
            ).first()
            if fresh is None:
                DUPLICATES.inc()
                stored = (
                    await conn.execute(
                        text("SELECT result FROM collector.executed_commands WHERE command_id = :c AND attempt = :a"),
                        {"c": request.command_id, "a": request.attempt},
                    )
                ).scalar_one_or_none()
                if stored is not None:
                    log.info("duplicate command %s attempt %d: result republished", request.command_id, request.attempt)
                    result = CommandResult.model_validate_json(stored)
                    await self._outbox.add(conn, topics.command_result(request.meter_id), result)
                else:
                    log.info("duplicate command %s attempt %d: still running", request.command_id, request.attempt)
        if fresh is None:
            self._outbox.notify()
            return
        # Run beside the listener so the next message (maybe another meter's trip) is not held up.
        task = asyncio.create_task(self._execute(poller, request), name=f"command:{request.command_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, poller: GatewayPoller, request: CommandRequested) -> None:
        if request.expires_at <= self._now():
            outcome = CommandOutcome(CommandStatus.EXPIRED, "expired before it could be sent")
        else:
            try:
                outcome = await poller.execute(request)
            except (BusError, ProtocolError) as err:
                outcome = CommandOutcome(
                    CommandStatus.FAILED, f"no valid answer from the meter ({error_kind(err)}): {err}"
                )
        await self._finish(poller, request, outcome)

    async def _finish(self, poller: GatewayPoller, request: CommandRequested, outcome: CommandOutcome) -> None:
        COMMANDS.labels(request.kind.value, outcome.status.value).inc()
        result = CommandResult(
            source=self._source,
            command_id=request.command_id,
            attempt=request.attempt,
            meter_id=request.meter_id,
            kind=request.kind,
            status=outcome.status,
            detail=outcome.detail,
            relay=outcome.relay,
            valve=outcome.valve,
            request_frame=outcome.request_frame.hex(" ").upper() if outcome.request_frame else None,
            response_frame=outcome.response_frame.hex(" ").upper() if outcome.response_frame else None,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE collector.executed_commands SET status = :s, detail = :d, result = :r, finished_at = now() "
                    "WHERE command_id = :c AND attempt = :a"
                ),
                {
                    "s": outcome.status.value,
                    "d": outcome.detail,
                    "r": result.model_dump_json(),
                    "c": request.command_id,
                    "a": request.attempt,
                },
            )
            await self._outbox.add(conn, topics.command_result(request.meter_id), result)
        self._outbox.notify()
        log.info(
            "command %s (attempt %d) %s on %s: %s %s",
            request.command_id,
            request.attempt,
            request.kind.value,
            request.meter_id,
            outcome.status.value,
            outcome.detail,
        )
        if outcome.relay is not None or outcome.valve is not None:
            row = StateRow(request.meter_id, True, outcome.relay, outcome.valve, None, None, None)
            await self._store.append_many(self._states.edges(poller.gateway.gateway_id, [row]))
            await self._states.write(poller.gateway.gateway_id, [row])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def utcnow() -> datetime:
    return datetime.now(UTC)
