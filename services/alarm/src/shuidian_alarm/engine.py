"""The evaluation path: MQTT inputs → observations → pure detectors (with `now`) → persisted rule state and
alarm decisions, each message in one transaction.

Rule state lives in `alarm.rule_states`, one row per source (meter or gateway) holding every slot's state,
locked for the transaction, so replicas sharing the subscriptions never interleave on one source. Each
instance caches parsed states keyed by the row's version and re-reads only rows another writer changed.
A tick loop feeds `Tick`s to states that mature with time alone (offline, relay mismatch) and escalates
unacknowledged alarms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Annotated, Any

from prometheus_client import Counter, Histogram
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import SchemaSerializer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm import detectors, occupancy, rules, targets, usage
from shuidian_alarm.alarms import AlarmService
from shuidian_alarm.detectors import (
    CONNECTIVITY,
    ConnectivityState,
    Observation,
    Rule,
    RuleState,
    ScopeTarget,
    SupplyMismatchState,
)
from shuidian_alarm.rulebook import RuleBook
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import (
    BalanceEvent,
    CommandKind,
    CommandRequested,
    CommandResult,
    CommandUpdate,
    DeadLetterParked,
    DeviceState,
    GatewayStatus,
    PollStats,
    Reading,
    ReadingBatch,
    RoomOccupancy,
    utcnow,
)

log = logging.getLogger(__name__)
_HOUR_PROBE = detectors.HourlyConsumption(
    meter_id="probe", hour_start=datetime(2000, 1, 1, tzinfo=UTC), quantity=Decimal(0)
)

EVALUATED = Counter("alarm_readings_evaluated_total", "readings run through the detectors")
STALE = Counter("alarm_balance_events_stale_total", "balance events older than one already seen")
BATCH_SECONDS = Histogram("alarm_batch_seconds", "time to evaluate one reading batch")

_MAX_APPLICABLE = 500_000  # cached rule lists: (target, observation type[, register names and flags])

SlotState = RuleState | usage.HourlyState
States = dict[str, SlotState]


@dataclass(frozen=True)
class Derive:
    """Part of a reading's plan: fold the reading into the meter's hourly consumption and feed each completed
    hour to `rules` (spike, vacancy)."""

    rules: tuple[tuple[str, Rule], ...]


@dataclass(frozen=True)
class Compiled:
    """Stands in for a threshold or flag rule fed a reading: its evaluation worked out once (`reading_step`)."""

    rule: detectors.ThresholdRule | detectors.FlagRule
    step: detectors.ReadingStep


@dataclass(frozen=True)
class Plan:
    """Stands in for every rule a reading feeds, so a reading is one feed: threshold and flag rules as their
    `reading_step`, the others as they are, then the hourly consumption if any rule takes hours."""

    steps: tuple[tuple[str, Rule | Compiled], ...]
    hourly: Derive | None


Feed = tuple[str, str, Rule | Plan, Observation]  # source, slot, rule, observation

_SUPPLY = {
    CommandKind.TRIP: False,
    CommandKind.VALVE_CLOSE: False,
    CommandKind.DIRECT_CLOSE: True,
    CommandKind.CLOSE_ALLOWED: True,
    CommandKind.VALVE_OPEN: True,
}


@cache
def _adapter() -> TypeAdapter[States]:
    return TypeAdapter(dict[str, Annotated[SlotState, Field(discriminator="kind")]])


_ENCODERS: dict[type[Any], tuple[SchemaSerializer, str]] = {}


# A row in which some slot repeats an earlier slot's state starts with this member (never a slot name); such a
# slot holds the position of that earlier slot, counted from 0 after the marker.
_REFS = '{"$refs":1,'


def decode_states(raw: str | bytes) -> States:
    """A source's states back from `StateStore.encode`; raises pydantic's ValidationError on anything else."""
    text_ = raw.decode() if isinstance(raw, bytes) else raw
    if text_.startswith(_REFS):
        try:
            parsed = json.loads(text_)
            del parsed["$refs"]
            values = list(parsed.values())
            text_ = json.dumps({slot: values[v] if type(v) is int else v for slot, v in parsed.items()})
        except (ValueError, TypeError, IndexError, AttributeError):
            pass  # not ours after all: the validator below says what is wrong with it
    return _adapter().validate_json(text_)


def _encode_state(state: SlotState) -> str:
    """One state as JSON that `decode_states` reads back to an equal state, written small: every meter's row is
    rewritten with each reading, and PostgreSQL's cost per row follows its size.

    Fields at their defaults are left out (the reader fills them in again), except `kind`, which tells the
    reader the class. The class's own serializer is called directly: no union to dispatch on and none of
    `TypeAdapter.dump_json`'s per-call options, which would double the cost on the hot path.
    """
    encoder = _ENCODERS.get(type(state))
    if encoder is None:
        encoder = _ENCODERS[type(state)] = (TypeAdapter(type(state)).serializer, f'{{"kind":"{state.kind}"')
    serializer, kind = encoder
    fields = serializer.to_json(state, exclude_defaults=True)
    return kind + "}" if fields == b"{}" else kind + "," + fields[1:].decode()


@cache
def _json_key(slot: str) -> str:
    return json.dumps(slot) + ":"


_TIMED = frozenset({ConnectivityState, SupplyMismatchState})


def pending(states: Iterable[SlotState]) -> bool:
    """Whether any state can change with time alone, so the tick loop must visit it."""
    for state in states:
        if type(state) not in _TIMED:  # most slots: skipped with one look-up
            continue
        if isinstance(state, ConnectivityState):
            links = [state.gateway] if state.gateway is not None else []
            # Offline without an alarm yet, or online again with the alarm still up.
            if any(link.online == link.alarmed for link in [*links, *state.meters.values()]):
                return True
        elif isinstance(state, SupplyMismatchState) and state.mismatch_since is not None and not state.active:
            return True
    return False


async def _no_feeds(conn: AsyncConnection) -> list[Feed]:
    return []


def _step(
    held: States, slot: str, rule: Rule, observation: Observation, now: datetime, out: list[rules.Decision]
) -> bool:
    """Evaluate one rule on its slot's state in place; whether the state changed."""
    current = held.get(slot)
    state = current if not isinstance(current, usage.HourlyState) else None
    try:
        new, made = detectors.evaluate(rule, state, observation, now)
    except TypeError:  # the slot's rule changed kind: its old state means nothing now
        new, made = detectors.evaluate(rule, None, observation, now)
    out += made
    if new is current:
        return False
    held[slot] = new
    return True


def _apply_plan(held: States, plan: Plan, reading: Reading, now: datetime, out: list[rules.Decision]) -> bool:
    """Every rule of a reading's plan on the meter's states in place; whether any state changed. The threshold
    and flag rules' steps are called directly, without `evaluate`'s dispatch: the hot path."""
    changed = False
    for slot, rule in plan.steps:
        current = held.get(slot)
        if type(rule) is Compiled and type(current) is detectors.DebounceState:
            new, made = rule.step(current, reading, now)
            if made:
                out += made
            if new is not current:
                held[slot] = new
                changed = True
        else:  # a fresh slot, another kind of rule, or a slot whose rule changed kind
            changed |= _step(held, slot, rule.rule if isinstance(rule, Compiled) else rule, reading, now, out)
    if plan.hourly is not None:
        changed |= _derive(held, plan.hourly, reading, now, out)
    return changed


def _derive(held: States, derive: Derive, reading: Reading, now: datetime, out: list[rules.Decision]) -> bool:
    """Fold a reading into the meter's hourly consumption and feed each hour it completed to the hourly rules."""
    current = held.get(usage.SLOT)
    state, hours = usage.accumulate(current if isinstance(current, usage.HourlyState) else None, reading)
    changed = state is not current
    held[usage.SLOT] = state
    for hour in hours:
        for slot, rule in derive.rules:
            changed |= _step(held, slot, rule, hour, now, out)
    return changed


@dataclass(frozen=True)
class _Saved:
    source_id: str
    version: int
    states: States


class StateStore:
    """Rule states per source in PostgreSQL, with a per-instance cache validated by row version.

    Every changed source's row is written whole, but a slot's JSON is encoded once per state object: states
    are immutable, so a slot whose state object is the one encoded last time reuses that text.
    """

    def __init__(self, max_cached: int = 200_000) -> None:
        self._cache: dict[str, tuple[int, States]] = {}
        self._encoded: dict[str, dict[str, tuple[SlotState, str]]] = {}
        self._max = max_cached

    async def load(self, conn: AsyncConnection, sources: list[str]) -> tuple[dict[str, States], dict[str, int]]:
        """Lock the sources' rows (stable order) and return copies of their states and their versions."""
        # Arrays, not rows: one result row however many sources, which keeps the hot path cheap.
        ids, numbers = (
            await conn.execute(
                text(
                    "SELECT coalesce(array_agg(source_id), '{}'), coalesce(array_agg(version), '{}') FROM ("
                    "SELECT source_id, version FROM alarm.rule_states WHERE source_id = ANY(:s) "
                    "ORDER BY source_id FOR UPDATE) locked"
                ),
                {"s": sources},
            )
        ).one()
        versions = dict(zip(ids, numbers, strict=True))
        known = {s: self._cache[s][1] for s, v in versions.items() if self._cache.get(s, (None, {}))[0] == v}
        stale = [s for s in versions if s not in known]
        if stale:
            rows = await conn.execute(
                text("SELECT source_id, version, states AS raw FROM alarm.rule_states WHERE source_id = ANY(:s)"),
                {"s": stale},
            )
            for row in rows:
                try:
                    parsed = decode_states(row.raw)
                except ValidationError:
                    log.error("rule state of %s no longer parses; starting it afresh", row.source_id)
                    parsed = {}
                known[row.source_id] = parsed
                self._remember(row.source_id, row.version, parsed)
        return {s: dict(known.get(s, {})) for s in sources}, versions

    async def save(self, conn: AsyncConnection, changed: dict[str, States]) -> list[_Saved]:
        if not changed:
            return []
        ids = sorted(changed)
        batch: dict[int, tuple[SlotState, str]] = {}  # a state object shared by many sources is encoded once
        saved_ids, saved_versions = (
            await conn.execute(
                text(
                    "WITH saved AS (INSERT INTO alarm.rule_states (source_id, states, pending) "
                    "SELECT * FROM unnest(CAST(:s AS text[]), CAST(:j AS text[]), CAST(:p AS boolean[])) "
                    "ON CONFLICT (source_id) DO UPDATE SET states = EXCLUDED.states, pending = EXCLUDED.pending, "
                    "version = alarm.rule_states.version + 1, updated_at = now() RETURNING source_id, version) "
                    "SELECT array_agg(source_id), array_agg(version) FROM saved"
                ),
                {
                    "s": ids,
                    "j": [self.encode(s, changed[s], batch) for s in ids],
                    "p": [pending(changed[s].values()) for s in ids],
                },
            )
        ).one()
        return [_Saved(i, v, changed[i]) for i, v in zip(saved_ids, saved_versions, strict=True)]

    def committed(self, saved: list[_Saved]) -> None:
        for entry in saved:
            self._remember(entry.source_id, entry.version, entry.states)

    def forget(self, sources: Iterable[str]) -> None:
        for source in sources:
            self._cache.pop(source, None)
            self._encoded.pop(source, None)

    def encode(self, source: str, states: States, shared: dict[int, tuple[SlotState, str]] | None = None) -> str:
        """A source's states as one JSON object, as `decode_states` reads them.

        A state object that fills several slots (every rule a reading left settled) is written once: the later
        slots hold the position of the first. That makes the row of a meter with the full electrical register set
        about 40 % shorter, and PostgreSQL's cost per row follows its size. `shared` holds encodings by state
        object (kept alive by the states they encode) for reuse across the sources of a batch: the settled states
        of readings taken at one instant are one object.
        """
        before = self._encoded.get(source, {})
        shared = {} if shared is None else shared
        after: dict[str, tuple[SlotState, str]] = {}
        first: dict[int, str] = {}  # state object → position of the first slot holding it
        parts: list[str] = []
        for position, (slot, state) in enumerate(states.items()):
            known = before.get(slot)
            if known is None or known[0] is not state:
                known = shared.get(id(state))
                if known is None:
                    known = shared[id(state)] = (state, _encode_state(state))
            after[slot] = known
            ref = first.get(id(state))
            if ref is None:
                first[id(state)] = str(position)
                parts.append(_json_key(slot) + known[1])
            else:
                parts.append(_json_key(slot) + ref)
        if len(self._encoded) >= self._max and source not in self._encoded:
            self._encoded.clear()
        self._encoded[source] = after
        return (_REFS if len(first) < len(after) else "{") + ",".join(parts) + "}"

    def _remember(self, source: str, version: int, states: States) -> None:
        if len(self._cache) >= self._max and source not in self._cache:
            self._cache.clear()  # crude but bounded; a miss only costs a re-read
        self._cache[source] = (version, states)


class TargetCache:
    """Targets and gateway scopes looked up once per `ttl`: a change made through another replica applies
    within that time, one made through this one at once."""

    def __init__(self, ttl: timedelta) -> None:
        self._ttl = ttl.total_seconds()
        self._meters: dict[str, targets.Target | None] = {}
        self._gateways: dict[str, ScopeTarget] = {}
        self._since = time.monotonic()

    def forget(self) -> None:
        self._meters, self._gateways, self._since = {}, {}, time.monotonic()

    def _expire(self) -> None:
        if time.monotonic() - self._since > self._ttl:
            self.forget()

    async def meters(self, conn: AsyncConnection, meter_ids: list[str]) -> dict[str, targets.Target]:
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
        self._applicable: dict[tuple[object, ...], list[tuple[str, Rule]]] = {}
        self._plans: dict[tuple[object, ...], Plan] = {}
        self._shapes: dict[tuple[tuple[tuple[str, int], ...], ...], Plan] = {}
        self._derives: dict[ScopeTarget, Derive] = {}
        self._book_version: object = None

    # --- targets --------------------------------------------------------------------------------

    async def put_targets(self, described: list[targets.Target]) -> None:
        async with self._engine.begin() as conn:
            await targets.upsert(conn, described)
        self._targets.forget()

    async def meter_scope(self, meter_id: str) -> ScopeTarget:
        """The scope a meter's rules resolve at, read afresh (not from the cache)."""
        async with self._engine.connect() as conn:
            return targets.meter_scope(meter_id, await targets.by_meter(conn, [meter_id]))

    # --- inputs ---------------------------------------------------------------------------------

    async def on_readings(self, batch: ReadingBatch, topic: str) -> None:
        with BATCH_SECONDS.time():
            now = self._clock()
            meter_ids = sorted({r.meter_id for r in batch.readings})

            async def feeds(conn: AsyncConnection) -> list[Feed]:
                known = await self._targets.meters(conn, meter_ids)
                out: list[Feed] = []
                for reading in sorted(batch.readings, key=lambda r: r.sampled_at):
                    plan = self._plan(targets.meter_scope(reading.meter_id, known), reading)
                    out.append((reading.meter_id, "", plan, reading))
                return out

            await self._run(now, feeds)
            EVALUATED.inc(len(batch.readings))

    async def on_device_state(self, state: DeviceState, topic: str) -> None:
        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [state.meter_id])
            meter_scope = targets.meter_scope(state.meter_id, known)
            gateway_scope = await self._targets.gateway(conn, state.gateway_id)
            out: list[Feed] = [
                (state.meter_id, slot, rule, state)
                for slot, rule in self._rules(meter_scope, state)
                if slot != CONNECTIVITY
            ]
            connectivity = self._book.rules_for(gateway_scope).get(CONNECTIVITY)
            if connectivity is not None:
                out.append((state.gateway_id, CONNECTIVITY, connectivity, state))
            return out

        await self._run(self._clock(), feeds)

    async def on_gateway_status(self, status: GatewayStatus, topic: str) -> None:
        observation = detectors.GatewayStatus(gateway_id=status.gateway_id, online=status.online, at=status.occurred_at)

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            rule = self._book.rules_for(await self._targets.gateway(conn, status.gateway_id)).get(CONNECTIVITY)
            return [] if rule is None else [(status.gateway_id, CONNECTIVITY, rule, observation)]

        await self._run(self._clock(), feeds)

    async def on_balance(self, event: BalanceEvent, topic: str) -> None:
        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [m.meter_id for m in event.meters])
            out: list[Feed] = []
            for observation in detectors.server_balances(event):
                scope = targets.meter_scope(observation.meter_id, known)
                out += [
                    (observation.meter_id, slot, rule, observation) for slot, rule in self._rules(scope, observation)
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

        await self._run(self._clock(), feeds, decisions=rules.on_balance(event), guard=fresh)

    async def on_dead_letter(self, event: DeadLetterParked, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=rules.on_dead_letter(event))

    async def on_command_result(self, result: CommandResult, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=rules.on_command_result(result))

    async def on_command_update(self, update: CommandUpdate, topic: str) -> None:
        await self._run(self._clock(), _no_feeds, decisions=rules.on_command_update(update))

    async def on_command_requested(self, command: CommandRequested, topic: str) -> None:
        """A relay or valve command sets the supply the shadow wants; the meter must follow within the grace."""
        supply_on = _SUPPLY.get(command.kind)
        if supply_on is None:
            return
        observation = detectors.SupplyDesired(meter_id=command.meter_id, supply_on=supply_on, at=command.occurred_at)

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, [command.meter_id])
            scope = targets.meter_scope(command.meter_id, known)
            return [(command.meter_id, slot, rule, observation) for slot, rule in self._rules(scope, observation)]

        await self._run(self._clock(), feeds)

    async def on_poll_stats(self, stats: PollStats, topic: str) -> None:
        """A gateway's poll counts per meter over one window feed each meter's communication-error rule."""
        windows = detectors.poll_windows(stats)

        async def feeds(conn: AsyncConnection) -> list[Feed]:
            known = await self._targets.meters(conn, sorted({w.meter_id for w in windows}))
            out: list[Feed] = []
            for window in windows:
                scope = targets.meter_scope(window.meter_id, known)
                out += [(window.meter_id, slot, rule, window) for slot, rule in self._rules(scope, window)]
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
                scope = targets.meter_scope(status.meter_id, known)
                out += [(status.meter_id, slot, rule, status) for slot, rule in self._rules(scope, status)]
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
        tick = detectors.Tick()
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
                            if detectors.needs_ticks(r) and slot != CONNECTIVITY
                        ]
                    else:  # a gateway, or a meter nobody described yet
                        rule = self._book.rules_for(await self._targets.gateway(conn, source)).get(CONNECTIVITY)
                        out += [] if rule is None else [(source, CONNECTIVITY, rule, tick)]
                        supply = self._book.rules_for(ScopeTarget(meter_id=source)).get(detectors.SUPPLY_MISMATCH)
                        out += [] if supply is None else [(source, detectors.SUPPLY_MISMATCH, supply, tick)]
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

    def _hourly(self, scope: ScopeTarget) -> Derive:
        """The rules fed by a meter's hourly consumption, cached like `_rules`."""
        derive = self._derives.get(scope)
        if derive is None or self._book_version is not self._book.version:
            derive = self._derives[scope] = Derive(tuple(self._rules(scope, _HOUR_PROBE)))
        return derive

    def _rules(self, scope: ScopeTarget, observation: Observation) -> list[tuple[str, Rule]]:
        """The rules whose state `observation` feeds, cached per target and observation type; for a reading
        also per register names and flags, leaving out the rules such a reading cannot move (`skips`)."""
        if self._book_version is not self._book.version:
            self._applicable, self._derives, self._book_version = {}, {}, self._book.version
            self._plans, self._shapes = {}, {}
        reading = observation if isinstance(observation, Reading) else None
        key: tuple[object, ...] = (
            (scope, type(observation)) if reading is None else (scope, Reading, tuple(reading.registers), reading.flags)
        )
        found = self._applicable.get(key)
        if found is None:
            if len(self._applicable) >= _MAX_APPLICABLE:
                self._applicable.clear()  # bounded; a miss only costs resolving again
            found = self._applicable[key] = [
                (slot, rule)
                for slot, rule in self._book.rules_for(scope).items()
                if detectors.source_of(rule, observation) is not None
                and not (reading is not None and detectors.skips(rule, reading.registers, reading.flags))
            ]
        return found

    def _plan(self, scope: ScopeTarget, reading: Reading) -> Plan:
        """What a reading feeds (`_rules`, `_hourly`), cached per target, register names and flags alike."""
        key = (scope, tuple(reading.registers), reading.flags)
        found = self._plans.get(key)
        if found is None or self._book_version is not self._book.version:
            rules_ = self._rules(scope, reading)  # drops every cache when the book changed
            hourly = self._hourly(scope)
            # Meters whose rules are the same objects share one plan (rules live as long as the book version).
            shape = (tuple((slot, id(rule)) for slot, rule in rules_), tuple((s, id(r)) for s, r in hourly.rules))
            found = self._shapes.get(shape)
            if found is None:
                if len(self._shapes) >= _MAX_APPLICABLE:
                    self._shapes.clear()
                steps = tuple(
                    (slot, Compiled(rule, detectors.reading_step(rule)))
                    if isinstance(rule, detectors.ThresholdRule | detectors.FlagRule)
                    else (slot, rule)
                    for slot, rule in rules_
                )
                found = self._shapes[shape] = Plan(steps, hourly if hourly.rules else None)
            if len(self._plans) >= _MAX_APPLICABLE:
                self._plans.clear()
            self._plans[key] = found
        return found

    async def _run(
        self,
        now: datetime,
        feeds: Callable[[AsyncConnection], Awaitable[list[Feed]]],
        *,
        decisions: list[rules.Decision] | None = None,
        guard: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
        only_existing: bool = False,
    ) -> None:
        saved: list[_Saved] = []
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
                out: list[rules.Decision] = list(decisions or ())
                changed: dict[str, States] = {}
                for source, slot, rule, observation in work:
                    held = states[source]
                    if isinstance(rule, Plan):
                        derived = isinstance(observation, Reading) and _apply_plan(held, rule, observation, now, out)
                    else:
                        derived = _step(held, slot, rule, observation, now, out)
                    if derived:
                        changed[source] = held
                saved = await self.store.save(conn, changed)
                await self._alarms.apply_in(conn, out)
        except BaseException:
            self.store.forget(sources)
            raise
        self.store.committed(saved)
        self._outbox.notify()
