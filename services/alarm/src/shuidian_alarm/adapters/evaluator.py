"""The evaluation path: MQTT inputs → observations → the pure evaluation (`domain.engine`, with `now`) → persisted
rule state and alarm decisions, each message in one transaction.

A tick loop feeds `Tick`s to states that mature with time alone (offline, relay mismatch) and escalates
unacknowledged alarms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.adapters import occupancy, targets
from shuidian_alarm.adapters.alarms import AlarmService
from shuidian_alarm.adapters.rulebook import RuleBook
from shuidian_alarm.adapters.state_store import Saved, StateStore
from shuidian_alarm.domain import events, held_readings, payment_events
from shuidian_alarm.domain.decisions import Decision
from shuidian_alarm.domain.detectors.connectivity import CONNECTIVITY
from shuidian_alarm.domain.detectors.supply import SUPPLY_MISMATCH
from shuidian_alarm.domain.engine import SUPPLY_WANTED, Feed, Planner, apply_feeds
from shuidian_alarm.domain.observations import GatewayStatus as GatewayStatusObservation
from shuidian_alarm.domain.observations import SupplyDesired, Tick, poll_windows, server_balances
from shuidian_alarm.domain.rules import needs_ticks
from shuidian_alarm.domain.scopes import ScopeTarget
from shuidian_alarm.domain.targets import Target, meter_scope
from shuidian_kit.outbox import Outbox
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.contracts.payments import PaymentProblem
from shuidian_shared.messages import (
    BalanceEvent,
    CommandRequested,
    CommandResult,
    CommandUpdate,
    DeadLetterParked,
    DeviceState,
    GatewayStatus,
    PollStats,
    ReadingBatch,
    ReadingHeld,
    RoomOccupancy,
    utcnow,
)

log = logging.getLogger(__name__)

EVALUATED = Counter("alarm_readings_evaluated_total", "readings run through the detectors")
STALE = Counter("alarm_balance_events_stale_total", "balance events older than one already seen")
BATCH_SECONDS = Histogram("alarm_batch_seconds", "time to evaluate one reading batch")


async def _no_feeds(conn: AsyncConnection) -> list[Feed]:
    return []


class TargetCache:
    """Targets and gateway scopes looked up once per `ttl`: a change made through another replica applies
    within that time, one made through this one at once."""

    def __init__(self, ttl: timedelta) -> None:
        self._ttl = ttl.total_seconds()
        self._meters: dict[str, Target | None] = {}
        self._gateways: dict[str, ScopeTarget] = {}
        self._since = time.monotonic()

    def forget(self) -> None:
        self._meters, self._gateways, self._since = {}, {}, time.monotonic()

    def _expire(self) -> None:
        if time.monotonic() - self._since > self._ttl:
            self.forget()

    async def meters(self, conn: AsyncConnection, meter_ids: list[str]) -> dict[str, Target]:
        self._expire()
        missing = [m for m in meter_ids if m not in self._meters]
        if missing:
            found = await targets.by_meter(conn, missing)
            self._meters.update({m: found.get(m) for m in missing})
        return {m: t for m in meter_ids if (t := self._meters[m]) is not None}

    async def gateway(self, conn: AsyncConnection, gateway_id: str) -> ScopeTarget:
        self._expire()
        scope = self._gateways.get(gateway_id)
        if scope is None:
            scope = self._gateways[gateway_id] = await targets.gateway_scope(conn, gateway_id)
        return scope


class Evaluator:
    """Handlers for every input and the tick; the composition root subscribes them."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        alarms: AlarmService,
        book: RuleBook,
        *,
        clock: Callable[[], datetime] = utcnow,
        tick_interval: timedelta = timedelta(seconds=15),
        targets_ttl: timedelta = timedelta(seconds=30),
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._alarms = alarms
        self._book = book
        self._clock = clock
        self._tick_interval = tick_interval
        self.store = StateStore()
        self._targets = TargetCache(targets_ttl)
        self._planner = Planner(book)

    # --- targets --------------------------------------------------------------------------------

    async def put_targets(self, described: list[Target]) -> None:
        async with self._engine.begin() as conn:
            await targets.upsert(conn, described)
        self._targets.forget()

    async def meter_scope(self, meter_id: str) -> ScopeTarget:
        """The scope a meter's rules resolve at, read afresh (not from the cache)."""
        async with self._engine.connect() as conn:
            return meter_scope(meter_id, await targets.by_meter(conn, [meter_id]))

    # --- inputs ---------------------------------------------------------------------------------

    async def on_readings(self, batch: ReadingBatch, topic: str) -> None:
        with BATCH_SECONDS.time():
            now = self._clock()
            meter_ids = sorted({r.meter_id for r in batch.readings})

            async def feeds(conn: AsyncConnection) -> list[Feed]:
                known = await self._targets.meters(conn, meter_ids)
                out: list[Feed] = []
                for reading in sorted(batch.readings, key=lambda r: r.sampled_at):
                    plan = self._planner.plan(meter_scope(reading.meter_id, known), reading)
                    out.append((reading.meter_id, "", plan, reading))
                return out

            await self._run(now, feeds)
            EVALUATED.inc(len(batch.readings))

    async def on_device_state(self, state: DeviceState, topic: str) -> None:
        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [state.meter_id])
            scope = meter_scope(state.meter_id, known)
            gateway_scope = await self._targets.gateway(conn, state.gateway_id)
            out: list[Feed] = [
                (state.meter_id, slot, rule, state)
                for slot, rule in self._planner.rules(scope, state)
                if slot != CONNECTIVITY
            ]
            connectivity = self._book.rules_for(gateway_scope).get(CONNECTIVITY)
            if connectivity is not None:
                out.append((state.gateway_id, CONNECTIVITY, connectivity, state))
            return out

        await self._run(self._clock(), feeds)

    async def on_gateway_status(self, status: GatewayStatus, topic: str) -> None:
        observation = GatewayStatusObservation(
            gateway_id=status.gateway_id, online=status.online, at=status.occurred_at
        )

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            rule = self._book.rules_for(await self._targets.gateway(conn, status.gateway_id)).get(CONNECTIVITY)
            return [] if rule is None else [(status.gateway_id, CONNECTIVITY, rule, observation)]

        await self._run(self._clock(), feeds)

    async def on_balance(self, event: BalanceEvent, topic: str) -> None:
        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [m.meter_id for m in event.meters])
            out: list[Feed] = []
            for observation in server_balances(event):
                scope = meter_scope(observation.meter_id, known)
                out += [
                    (observation.meter_id, slot, rule, observation)
                    for slot, rule in self._planner.rules(scope, observation)
                ]
            return out

        async def fresh(conn: AsyncConnection) -> bool:
            row = await conn.execute(
                text(
                    "INSERT INTO alarm.account_sequences (account_id, sequence) VALUES (:a, :s) "
                    "ON CONFLICT (account_id) DO UPDATE SET sequence = EXCLUDED.sequence "
                    "WHERE alarm.account_sequences.sequence < EXCLUDED.sequence RETURNING account_id"
                ),
                {"a": event.account_id, "s": event.sequence},
            )
            if row.first() is None:
                STALE.inc()
                return False
            return True

        await self._run(self._clock(), feeds, decisions=events.on_balance(event), guard=fresh)

    async def on_dead_letter(self, event: DeadLetterParked, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=events.on_dead_letter(event))

    async def on_command_result(self, result: CommandResult, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=events.on_command_result(result))

    async def on_command_update(self, update: CommandUpdate, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=events.on_command_update(update))

    async def on_line_loss(self, event: LineLossExceeded, topic: str) -> None:
        """Insights' line-loss verdict on a group: the alarm sits where the group's master meter is described."""
        async with self._engine.connect() as conn:
            master = (await self._targets.meters(conn, [event.master_meter_id])).get(event.master_meter_id)
        await self._run(self._clock(), _no_feeds, decisions=events.on_line_loss(event, master))

    async def on_reading_held(self, event: ReadingHeld, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=held_readings.on_reading_held(event))

    async def on_payment_problem(self, event: PaymentProblem, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=payment_events.on_payment_problem(event))

    async def on_command_requested(self, command: CommandRequested, topic: str) -> None:
        """A relay or valve command sets the supply the shadow wants; the meter must follow within the grace."""
        supply_on = SUPPLY_WANTED.get(command.kind)
        if supply_on is None:
            return
        observation = SupplyDesired(meter_id=command.meter_id, supply_on=supply_on, at=command.occurred_at)

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [command.meter_id])
            scope = meter_scope(command.meter_id, known)
            return [
                (command.meter_id, slot, rule, observation) for slot, rule in self._planner.rules(scope, observation)
            ]

        await self._run(self._clock(), feeds)

    async def on_poll_stats(self, stats: PollStats, topic: str) -> None:
        """A gateway's poll counts per meter over one window feed each meter's communication-error rule."""
        windows = poll_windows(stats)

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, sorted({w.meter_id for w in windows}))
            out: list[Feed] = []
            for window in windows:
                scope = meter_scope(window.meter_id, known)
                out += [(window.meter_id, slot, rule, window) for slot, rule in self._planner.rules(scope, window)]
            return out

        await self._run(self._clock(), feeds)

    async def on_room_occupancy(self, room: RoomOccupancy, topic: str) -> None:
        """A room's occupancy sets the lease status of the meters it lists now and of those it listed before."""
        affected: list[str] = []

        async def newer(conn: AsyncConnection) -> bool:
            meters = await occupancy.record(conn, room)
            affected.extend(meters or ())
            return meters is not None

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            if not affected:
                return []
            known = await self._targets.meters(conn, affected)
            out: list[Feed] = []
            for status in await occupancy.statuses(conn, affected, room):
                scope = meter_scope(status.meter_id, known)
                out += [(status.meter_id, slot, rule, status) for slot, rule in self._planner.rules(scope, status)]
            return out

        await self._run(self._clock(), feeds, guard=newer)

    # --- time -----------------------------------------------------------------------------------

    async def tick(self, now: datetime, chunk: int = 500) -> None:
        """Feed a Tick to every pending state, then escalate unacknowledged alarms."""
        await self._book.load()
        async with self._engine.connect() as conn:
            due = [
                row.source_id
                for row in await conn.execute(
                    text("SELECT source_id FROM alarm.rule_states WHERE pending ORDER BY source_id")
                )
            ]
        tick = Tick()
        for start in range(0, len(due), chunk):
            sources = due[start : start + chunk]

            async def feeds(conn: AsyncConnection, sources: list[str] = sources) -> list[Feed]:
                known = await self._targets.meters(conn, sources)
                out: list[Feed] = []
                for source in sources:
                    target = known.get(source)
                    if target is not None:
                        rules_ = self._book.rules_for(target.scope())
                        out += [
                            (source, slot, r, tick)
                            for slot, r in rules_.items()
                            if needs_ticks(r) and slot != CONNECTIVITY
                        ]
                    else:  # a gateway, or a meter nobody described yet
                        rule = self._book.rules_for(await self._targets.gateway(conn, source)).get(CONNECTIVITY)
                        out += [] if rule is None else [(source, CONNECTIVITY, rule, tick)]
                        supply = self._book.rules_for(ScopeTarget(meter_id=source)).get(SUPPLY_MISMATCH)
                        out += [] if supply is None else [(source, SUPPLY_MISMATCH, supply, tick)]
                return out

            await self._run(now, feeds, only_existing=True)
        await self._alarms.escalate(now)

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval.total_seconds())
            try:
                await self.tick(self._clock())
            except Exception:
                log.exception("alarm tick failed; will retry")

    # --- the one path every input takes ---------------------------------------------------------

    async def _run(
        self,
        now: datetime,
        feeds: Callable[[AsyncConnection], Awaitable[list[Feed]]],
        *,
        decisions: list[Decision] | None = None,
        guard: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
        only_existing: bool = False,
    ) -> None:
        saved: list[Saved] = []
        sources: list[str] = []
        try:
            async with self._engine.begin() as conn:
                if guard is not None and not await guard(conn):
                    return
                work = await feeds(conn)
                sources = sorted({source for source, _, _, _ in work})
                states, versions = await self.store.load(conn, sources)
                if only_existing:
                    work = [f for f in work if f[0] in versions and f[1] in states[f[0]]]
                out: list[Decision] = list(decisions or ())
                changed = apply_feeds(states, work, now, out)
                saved = await self.store.save(conn, changed)
                await self._alarms.apply_in(conn, out)
        except BaseException:
            self.store.forget(sources)
            raise
        self.store.committed(saved)
        self._outbox.notify()
