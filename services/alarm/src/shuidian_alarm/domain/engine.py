"""The pure middle of evaluation: which rules an observation feeds (`Planner`), and running feeds on the
sources' states (`apply_feeds`). The evaluator adapter loads the states and saves what changed around it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Protocol

from shuidian_alarm.domain import usage
from shuidian_alarm.domain.decisions import Decision
from shuidian_alarm.domain.detectors.debounce import DebounceState
from shuidian_alarm.domain.detectors.thresholds import FlagRule, ReadingStep, ThresholdRule, reading_step
from shuidian_alarm.domain.observations import HourlyConsumption, Observation
from shuidian_alarm.domain.rules import Rule, evaluate, skips, source_of
from shuidian_alarm.domain.scopes import ScopeTarget
from shuidian_alarm.domain.states import States
from shuidian_shared.messages import CommandKind, Reading

_HOUR_PROBE: Final = HourlyConsumption(
    meter_id="probe", hour_start=datetime(2000, 1, 1, tzinfo=UTC), quantity=Decimal(0)
)
_MAX_APPLICABLE: Final = 500_000  # cached rule lists: (target, observation type[, register names and flags])

# The supply a relay or valve command asks for (on: relay closed / valve open); other commands say nothing.
SUPPLY_WANTED: Final = {
    CommandKind.TRIP: False,
    CommandKind.VALVE_CLOSE: False,
    CommandKind.DIRECT_CLOSE: True,
    CommandKind.CLOSE_ALLOWED: True,
    CommandKind.VALVE_OPEN: True,
}


@dataclass(frozen=True)
class Derive:
    """Part of a reading's plan: fold the reading into the meter's hourly consumption and feed each completed
    hour to `rules` (spike, vacancy)."""

    rules: tuple[tuple[str, Rule], ...]


@dataclass(frozen=True)
class Compiled:
    """Stands in for a threshold or flag rule fed a reading: its evaluation worked out once (`reading_step`)."""

    rule: ThresholdRule | FlagRule
    step: ReadingStep


@dataclass(frozen=True)
class Plan:
    """Stands in for every rule a reading feeds, so a reading is one feed: threshold and flag rules as their
    `reading_step`, the others as they are, then the hourly consumption if any rule takes hours."""

    steps: tuple[tuple[str, Rule | Compiled], ...]
    hourly: Derive | None


Feed = tuple[str, str, Rule | Plan, Observation]  # source, slot, rule, observation


class RuleSource(Protocol):
    """The configured rules (the rule book): effective rules per target, and a new `version` object on change."""

    @property
    def version(self) -> object: ...

    def rules_for(self, target: ScopeTarget) -> dict[str, Rule]: ...


class Planner:
    """Which rules an observation feeds, cached per target and observation shape until the rule book changes."""

    def __init__(self, book: RuleSource) -> None:
        self._book = book
        self._applicable: dict[tuple[object, ...], list[tuple[str, Rule]]] = {}
        self._plans: dict[tuple[object, ...], Plan] = {}
        self._shapes: dict[tuple[tuple[tuple[str, int], ...], ...], Plan] = {}
        self._derives: dict[ScopeTarget, Derive] = {}
        self._book_version: object = None

    def hourly(self, scope: ScopeTarget) -> Derive:
        """The rules fed by a meter's hourly consumption, cached like `rules`."""
        derive = self._derives.get(scope)
        if derive is None or self._book_version is not self._book.version:
            derive = self._derives[scope] = Derive(tuple(self.rules(scope, _HOUR_PROBE)))
        return derive

    def rules(self, scope: ScopeTarget, observation: Observation) -> list[tuple[str, Rule]]:
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
                if source_of(rule, observation) is not None
                and not (reading is not None and skips(rule, reading.registers, reading.flags))
            ]
        return found

    def plan(self, scope: ScopeTarget, reading: Reading) -> Plan:
        """What a reading feeds (`rules`, `hourly`), cached per target, register names and flags alike."""
        key = (scope, tuple(reading.registers), reading.flags)
        found = self._plans.get(key)
        if found is None or self._book_version is not self._book.version:
            rules_ = self.rules(scope, reading)  # drops every cache when the book changed
            hourly = self.hourly(scope)
            # Meters whose rules are the same objects share one plan (rules live as long as the book version).
            shape = (tuple((slot, id(rule)) for slot, rule in rules_), tuple((s, id(r)) for s, r in hourly.rules))
            found = self._shapes.get(shape)
            if found is None:
                if len(self._shapes) >= _MAX_APPLICABLE:
                    self._shapes.clear()
                steps = tuple(
                    (slot, Compiled(rule, reading_step(rule)))
                    if isinstance(rule, ThresholdRule | FlagRule)
                    else (slot, rule)
                    for slot, rule in rules_
                )
                found = self._shapes[shape] = Plan(steps, hourly if hourly.rules else None)
            if len(self._plans) >= _MAX_APPLICABLE:
                self._plans.clear()
            self._plans[key] = found
        return found


def apply_feeds(
    states: dict[str, States], work: Sequence[Feed], now: datetime, out: list[Decision]
) -> dict[str, States]:
    """Run every feed on its source's states in place, appending decisions to `out`; the sources that changed."""
    changed: dict[str, States] = {}
    for source, slot, rule, observation in work:
        held = states[source]
        if isinstance(rule, Plan):
            derived = isinstance(observation, Reading) and _apply_plan(held, rule, observation, now, out)
        else:
            derived = _step(held, slot, rule, observation, now, out)
        if derived:
            changed[source] = held
    return changed


def _step(held: States, slot: str, rule: Rule, observation: Observation, now: datetime, out: list[Decision]) -> bool:
    """Evaluate one rule on its slot's state in place; whether the state changed."""
    current = held.get(slot)
    state = current if not isinstance(current, usage.HourlyState) else None
    try:
        new, made = evaluate(rule, state, observation, now)
    except TypeError:  # the slot's rule changed kind: its old state means nothing now
        new, made = evaluate(rule, None, observation, now)
    out += made
    if new is current:
        return False
    held[slot] = new
    return True


def _apply_plan(held: States, plan: Plan, reading: Reading, now: datetime, out: list[Decision]) -> bool:
    """Every rule of a reading's plan on the meter's states in place; whether any state changed. The threshold
    and flag rules' steps are called directly, without `evaluate`'s dispatch: the hot path."""
    changed = False
    for slot, rule in plan.steps:
        current = held.get(slot)
        if type(rule) is Compiled and type(current) is DebounceState:
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


def _derive(held: States, derive: Derive, reading: Reading, now: datetime, out: list[Decision]) -> bool:
    """Fold a reading into the meter's hourly consumption and feed each hour it completed to the hourly rules."""
    current = held.get(usage.SLOT)
    state, hours = usage.accumulate(current if isinstance(current, usage.HourlyState) else None, reading)
    changed = state is not current
    held[usage.SLOT] = state
    for hour in hours:
        for slot, rule in derive.rules:
            changed |= _step(held, slot, rule, hour, now, out)
    return changed
