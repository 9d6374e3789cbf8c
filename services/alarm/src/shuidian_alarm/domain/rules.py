"""Every rule the detectors know, in one place: the unions of rules and their states, `evaluate` (dispatch to
the rule's family module), the platform defaults, scope resolution and the JSON forms of rules.

A new rule: its family module in `domain/detectors/`, whose rule class says what it raises (`slot`), what it
judges a meter by (`feeds`) and whether it matures with time alone (`ticks`); then its entry in `Rule`,
`RuleState`, `evaluate` and `default_rules` below (and `skips` if a reading can leave it untouched). Nothing
outside `domain/` changes: the evaluator feeds every rule by what it declares.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, TypeAdapter, ValidationError

from shuidian_alarm.domain.baselines import china_calendar
from shuidian_alarm.domain.decisions import Decision
from shuidian_alarm.domain.detectors.balance import (
    METER_BALANCE,
    BalanceMismatchRule,
    BalanceMismatchState,
    on_balances,
)
from shuidian_alarm.domain.detectors.comm_errors import CommErrorRule, CommErrorState, on_poll
from shuidian_alarm.domain.detectors.connectivity import ConnectivityRule, ConnectivityState, on_connectivity
from shuidian_alarm.domain.detectors.debounce import DebounceState
from shuidian_alarm.domain.detectors.spike import SpikeRule, SpikeState, on_hourly_spike
from shuidian_alarm.domain.detectors.supply import SupplyMismatchRule, SupplyMismatchState, on_supply
from shuidian_alarm.domain.detectors.thresholds import GAUGES, FlagRule, Measure, ThresholdRule, reading_step
from shuidian_alarm.domain.detectors.vacancy import VacantUsageRule, VacantUsageState, on_vacancy
from shuidian_alarm.domain.detectors.water import WATER_VOLUME, WaterLeakRule, WaterLeakState, on_water_reading
from shuidian_alarm.domain.observations import (
    GatewayStatus,
    HourlyConsumption,
    Observation,
    PollWindow,
    Tick,
)
from shuidian_alarm.domain.scopes import PRECEDENCE, RuleScope, ScopeLevel, ScopeTarget
from shuidian_alarm.domain.times import HOUR, ZERO, aware
from shuidian_alarm.errors import InvalidRule
from shuidian_shared.messages import AlarmSeverity, DeviceState, Reading, ReadingFlag

Rule = (
    ThresholdRule
    | FlagRule
    | SpikeRule
    | WaterLeakRule
    | ConnectivityRule
    | CommErrorRule
    | SupplyMismatchRule
    | VacantUsageRule
    | BalanceMismatchRule
)
RuleState = (
    DebounceState
    | SpikeState
    | WaterLeakState
    | ConnectivityState
    | CommErrorState
    | SupplyMismatchState
    | VacantUsageState
    | BalanceMismatchState
)
_S = TypeVar("_S", bound=RuleState)


def _expect(state: RuleState | None, cls: type[_S]) -> _S:
    if state is None:
        return cls()
    if not isinstance(state, cls):
        raise TypeError(f"{type(state).__name__} is not the state of this rule ({cls.__name__})")
    return state


def evaluate(
    rule: Rule, state: RuleState | None, observation: Observation, now: datetime
) -> tuple[RuleState, list[Decision]]:
    """Apply one observation to a rule's state (None: fresh); the new state and the alarms to raise or clear."""
    aware(now)
    match rule:
        case ThresholdRule() | FlagRule():
            debounce = state if type(state) is DebounceState else _expect(state, DebounceState)
            if isinstance(observation, Reading):
                return reading_step(rule)(debounce, observation, now)
            return debounce, []
        case SpikeRule():
            spike = _expect(state, SpikeState)
            if isinstance(observation, HourlyConsumption):
                return on_hourly_spike(rule, spike, observation, now)
            return spike, []
        case WaterLeakRule():
            water = _expect(state, WaterLeakState)
            if isinstance(observation, Reading):
                return on_water_reading(rule, water, observation, now)
            return water, []
        case ConnectivityRule():
            return on_connectivity(rule, _expect(state, ConnectivityState), observation, now)
        case CommErrorRule():
            comm = _expect(state, CommErrorState)
            if isinstance(observation, PollWindow):
                return on_poll(rule, comm, observation, now)
            return comm, []
        case SupplyMismatchRule():
            return on_supply(rule, _expect(state, SupplyMismatchState), observation, now)
        case VacantUsageRule():
            return on_vacancy(rule, _expect(state, VacantUsageState), observation, now)
        case BalanceMismatchRule():
            return on_balances(rule, _expect(state, BalanceMismatchState), observation, now)


def source_of(rule: Rule, observation: Observation) -> str | None:
    """The source whose state `observation` feeds under `rule` (the gateway for connectivity, else the meter)."""
    if isinstance(rule, ConnectivityRule):
        return observation.gateway_id if isinstance(observation, GatewayStatus | DeviceState) else None
    if isinstance(observation, GatewayStatus | Tick) or not isinstance(observation, rule.feeds):
        return None
    return observation.meter_id


def skips(rule: Rule, registers: Collection[str], flags: Collection[ReadingFlag]) -> bool:
    """Whether a reading with these registers and flags, whatever their values, leaves the rule's state as it
    is and decides nothing, so the service need not evaluate the rule on it at all. False when unsure."""
    match rule:
        case ThresholdRule():
            gauge = GAUGES[rule.measure]
            # A flag the meter can raise is evidence even when absent (see reading_step).
            return gauge.flag is None and not any(name in registers for name in gauge.registers)
        case FlagRule():
            return rule.flag not in flags and ReadingFlag.PARTIAL in flags
        case WaterLeakRule():
            return WATER_VOLUME not in registers
        case BalanceMismatchRule():
            return METER_BALANCE not in registers
        case _:
            return False


def needs_ticks(rule: Rule) -> bool:
    """Whether the rule's conditions mature with time alone, so the service must feed it `Tick`s."""
    return rule.ticks


# --- scopes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScopedRule:
    """A rule configured at a scope; `enabled=False` switches the slot off for that scope and narrower ones."""

    scope: RuleScope
    rule: Rule
    enabled: bool = True


def resolve_rules(rules: Iterable[ScopedRule], target: ScopeTarget) -> dict[str, Rule]:
    """The rules that apply to `target`, by slot: per slot the most specific scope wins."""
    chosen: dict[str, ScopedRule] = {}
    for scoped in rules:
        if not scoped.scope.applies_to(target):
            continue
        slot = scoped.rule.slot
        held = chosen.get(slot)
        if held is not None and held.scope.level is scoped.scope.level:
            raise ValueError(f"two {slot} rules at the same scope ({scoped.scope.level.value}) apply")
        if held is None or PRECEDENCE.index(scoped.scope.level) > PRECEDENCE.index(held.scope.level):
            chosen[slot] = scoped
    return {slot: scoped.rule for slot, scoped in sorted(chosen.items()) if scoped.enabled}


def default_rules() -> tuple[ScopedRule, ...]:
    """Platform-wide starting rules (voltage band per GB/T 12325 for 220 V supply); estates override per scope."""
    everywhere = RuleScope(level=ScopeLevel.DEFAULT)
    rules: list[Rule] = [
        ThresholdRule(measure=Measure.OVER_VOLTAGE, limit=Decimal("235.4"), margin=Decimal("2.2")),
        ThresholdRule(measure=Measure.UNDER_VOLTAGE, limit=Decimal("198"), margin=Decimal("2.2")),
        ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal("60"), margin=Decimal("3")),
        ThresholdRule(measure=Measure.OVERLOAD, limit=Decimal("13.2"), margin=Decimal("0.5")),
        ThresholdRule(measure=Measure.REVERSE_POWER, limit=Decimal("0.05"), margin=Decimal("0.02")),
        ThresholdRule(
            measure=Measure.LOW_POWER_FACTOR,
            limit=Decimal("0.5"),
            margin=Decimal("0.05"),
            min_load=Decimal("0.2"),
            raise_after=timedelta(minutes=30),
        ),
        # 30 mA is the rated residual operating current (IΔn) of a household RCD and the collector's leakage
        # flag threshold: reaching it is leakage.
        ThresholdRule(
            measure=Measure.ELECTRIC_LEAKAGE,
            limit=Decimal("30"),
            inclusive=True,
            margin=Decimal("5"),
            raise_after=ZERO,
            severity=AlarmSeverity.CRITICAL,
        ),
        ThresholdRule(measure=Measure.CLOCK_DRIFT, limit=Decimal("300"), margin=Decimal("30"), raise_after=ZERO),
        FlagRule(flag=ReadingFlag.TAMPER, severity=AlarmSeverity.MAJOR),
        FlagRule(flag=ReadingFlag.BATTERY_LOW, raise_after=HOUR, clear_after=timedelta(hours=24)),
        SpikeRule(calendar=china_calendar()),
        WaterLeakRule(),
        ConnectivityRule(),
        CommErrorRule(),
        SupplyMismatchRule(),
        VacantUsageRule(),
        BalanceMismatchRule(),
    ]
    return tuple(ScopedRule(scope=everywhere, rule=rule) for rule in rules)


@dataclass(frozen=True)
class StoredRule:
    """A rule as configured: at a scope, for a slot, on or off; `updated_at` None for a built-in default."""

    scope: RuleScope
    slot: str
    enabled: bool
    rule: Rule
    updated_at: datetime | None


class RuleSet:
    """The built-in defaults with the stored rules over them, and the effective rules per target (cached).

    Never changed once built: a new configuration is a new RuleSet, so its identity tells derived caches apart.
    """

    def __init__(self, builtin: Sequence[ScopedRule], stored: Sequence[StoredRule] = ()) -> None:
        self._builtin = tuple(builtin)
        self._stored = tuple(stored)
        self._resolved: dict[ScopeTarget, dict[str, Rule]] = {}

    def entries(self) -> list[StoredRule]:
        """Built-in defaults not overridden at the default scope, then every stored rule."""
        overridden = {s.slot for s in self._stored if s.scope.level is ScopeLevel.DEFAULT}
        builtin = [
            StoredRule(d.scope, d.rule.slot, d.enabled, d.rule, None)
            for d in self._builtin
            if d.rule.slot not in overridden
        ]
        return builtin + list(self._stored)

    def rules_for(self, target: ScopeTarget) -> dict[str, Rule]:
        """The effective rules of a meter or gateway, by slot (cached per target)."""
        rules = self._resolved.get(target)
        if rules is None:
            scoped = [ScopedRule(scope=e.scope, rule=e.rule, enabled=e.enabled) for e in self.entries()]
            rules = self._resolved[target] = resolve_rules(scoped, target)
        return rules


# --- persistence --------------------------------------------------------------------------------------------


@cache
def _rules() -> TypeAdapter[Rule]:
    return TypeAdapter(Annotated[Rule, Field(discriminator="kind")])


def rule_to_json(rule: Rule) -> str:
    """A rule's configuration as JSON."""
    return _rules().dump_json(rule).decode()


def rule_from_json(raw: str | bytes) -> Rule:
    """A rule back from `rule_to_json`; raises pydantic's ValidationError on anything else."""
    return _rules().validate_json(raw)


# --- configuration as staff enter it ------------------------------------------------------------------------


def parse_rule(slot: str, raw: dict[str, Any]) -> Rule:
    """A rule from its JSON form, or InvalidRule saying why not."""
    try:
        rule = rule_from_json(json.dumps(raw))
    except (ValidationError, ValueError, TypeError) as err:
        raise InvalidRule(f"rule does not validate: {err}") from err
    if rule.slot != slot:
        raise InvalidRule(f"a {rule.kind} rule fills slot {rule.slot!r}, not {slot!r}")
    stored = rule_to_json(rule)
    if "\\u0000" in stored:
        raise InvalidRule("rule text must not contain NUL characters")
    for zone in _zones(rule):
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise InvalidRule(f"unknown time zone {zone!r}") from err
    return rule


def _zones(rule: Rule) -> list[str]:
    """Time zones a rule will look up when it runs: checked on the way in, not at 3 a.m."""
    zones = [getattr(rule, "timezone", None)]
    calendar = getattr(rule, "calendar", None)
    zones.append(getattr(calendar, "timezone", None))
    return [z for z in zones if isinstance(z, str)]


def scope_of(level: ScopeLevel, key: str | None) -> RuleScope:
    try:
        return RuleScope(level=level, key=key or "")
    except ValueError as err:
        raise InvalidRule(str(err)) from err
