"""Reading thresholds and flags: a value beyond a limit (voltage, current, load, power factor, residual current,
clock offset) or a flag the meter raises (tamper, battery low …), debounced. These run for nearly every reading
of every meter, so each rule compiles once into a `reading_step`."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.detectors.debounce import DebounceState, Evidence, debounce, settled
from shuidian_alarm.domain.observations import Feeds
from shuidian_alarm.domain.times import FUTURE_TOLERANCE, HOUR, ZERO, iso
from shuidian_shared.messages import CLOCK_OFFSET, RESIDUAL_CURRENT, AlarmSeverity, Reading, ReadingFlag

# Canonical registers read here (the collector's canonical names and units).
VOLTAGES: Final = ("voltage_a", "voltage_b", "voltage_c")  # V
CURRENTS: Final = ("current_a", "current_b", "current_c")  # A
POWER_ACTIVE: Final = "power_active"  # kW, negative when exporting
POWER_FACTOR: Final = "power_factor"
# Also read: RESIDUAL_CURRENT (mA) and CLOCK_OFFSET (s, meter clock minus collector clock) from shared.messages.


class Measure(StrEnum):
    """What a threshold rule watches; the value is also its alarm type."""

    OVER_VOLTAGE = "over_voltage"
    UNDER_VOLTAGE = "under_voltage"
    OVER_CURRENT = "over_current"
    OVERLOAD = "overload"
    REVERSE_POWER = "reverse_power"
    LOW_POWER_FACTOR = "low_power_factor"
    ELECTRIC_LEAKAGE = "electric_leakage"
    CLOCK_DRIFT = "clock_drift"


@dataclass(frozen=True)
class _Gauge:
    registers: tuple[str, ...]
    combine: Callable[[Sequence[Decimal]], Decimal]
    above: bool  # the alarm is above the limit (else below)
    unit: str
    name_zh: str
    name_en: str
    flag: ReadingFlag | None = None  # a flag that means the condition holds, whatever the registers say


def _highest(values: Sequence[Decimal]) -> Decimal:
    return max(values)


def _lowest(values: Sequence[Decimal]) -> Decimal:
    return min(values)


def _exported(values: Sequence[Decimal]) -> Decimal:
    return -values[0]


def _magnitude(values: Sequence[Decimal]) -> Decimal:
    return abs(values[0])


GAUGES: Final[Mapping[Measure, _Gauge]] = MappingProxyType(
    {
        Measure.OVER_VOLTAGE: _Gauge(VOLTAGES, _highest, True, "V", "过电压", "Over-voltage"),
        Measure.UNDER_VOLTAGE: _Gauge(VOLTAGES, _lowest, False, "V", "欠电压", "Under-voltage"),
        Measure.OVER_CURRENT: _Gauge(CURRENTS, _highest, True, "A", "过电流", "Over-current"),
        Measure.OVERLOAD: _Gauge((POWER_ACTIVE,), _highest, True, "kW", "过载", "Overload"),
        Measure.REVERSE_POWER: _Gauge(
            (POWER_ACTIVE,), _exported, True, "kW", "功率反向", "Reverse power", flag=ReadingFlag.POWER_REVERSED
        ),
        Measure.LOW_POWER_FACTOR: _Gauge((POWER_FACTOR,), _magnitude, False, "", "功率因数过低", "Low power factor"),
        Measure.ELECTRIC_LEAKAGE: _Gauge(
            (RESIDUAL_CURRENT,), _highest, True, "mA", "漏电", "Electric leakage", flag=ReadingFlag.LEAKAGE
        ),
        Measure.CLOCK_DRIFT: _Gauge(
            (CLOCK_OFFSET,), _magnitude, True, "s", "时钟偏差", "Clock drift", flag=ReadingFlag.CLOCK_DRIFT
        ),
    }
)

_FLAG_TEXT: Final[Mapping[ReadingFlag, tuple[str, str]]] = MappingProxyType(
    {
        ReadingFlag.TAMPER: ("表计开盖或被拆动", "Meter cover opened or tampered with"),
        ReadingFlag.BATTERY_LOW: ("表计电池电压低", "Meter battery low"),
        ReadingFlag.CLOCK_DRIFT: ("表计时钟偏差", "Meter clock drifted"),
        ReadingFlag.POWER_REVERSED: ("功率反向", "Reverse power"),
        ReadingFlag.PARTIAL: ("部分数据项抄读失败", "Some registers did not answer"),
        ReadingFlag.LEAKAGE: ("表计漏电保护告警", "Meter residual-current protection warned or tripped"),
    }
)


@dataclass(frozen=True, kw_only=True)
class ThresholdRule:
    """A reading value beyond `limit` for `raise_after`; cleared once back inside by `margin` for `clear_after`.

    Beyond means strictly above (below, for a lower limit) unless `inclusive`, when the limit itself counts:
    for limits that are rated trip points, such as the 30 mA residual operating current of a household RCD,
    which the collector also flags from 30 mA on.
    """

    kind: Literal["threshold"] = "threshold"
    measure: Measure
    limit: Decimal
    inclusive: bool = False
    margin: Decimal = Decimal(0)
    raise_after: timedelta = timedelta(minutes=5)
    clear_after: timedelta = timedelta(minutes=5)
    max_gap: timedelta | None = timedelta(minutes=30)
    # Power factor means nothing near no load: below this active power (kW) it is not judged.
    min_load: Decimal = Decimal(0)
    severity: AlarmSeverity = AlarmSeverity.WARNING
    feeds: ClassVar[Feeds] = (Reading,)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes

    def __post_init__(self) -> None:
        if self.margin < 0 or self.min_load < 0:
            raise ValueError("margin and min_load cannot be negative")

    @property
    def slot(self) -> str:
        """The alarm type it raises, which is also what a more specific scope overrides."""
        return self.measure.value


@dataclass(frozen=True, kw_only=True)
class FlagRule:
    """A reading flag (tamper, battery low …) present for `raise_after`, cleared once absent for `clear_after`."""

    kind: Literal["flag"] = "flag"
    flag: ReadingFlag
    raise_after: timedelta = ZERO
    clear_after: timedelta = HOUR
    max_gap: timedelta | None = None
    severity: AlarmSeverity = AlarmSeverity.WARNING
    feeds: ClassVar[Feeds] = (Reading,)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes

    @property
    def slot(self) -> str:
        """The alarm type it raises, which is also what a more specific scope overrides."""
        return self.flag.value


ReadingStep = Callable[[DebounceState, Reading, datetime], tuple[DebounceState, list[Decision]]]


_STEPS: dict[int, tuple[ThresholdRule | FlagRule, ReadingStep]] = {}


def reading_step(rule: ThresholdRule | FlagRule) -> ReadingStep:
    """`evaluate` of a threshold or flag rule on a reading, with everything the rule fixes worked out once.

    These rules run for nearly every reading of every meter, so their evaluation is a closure over the rule's
    constants, and the common outcome (evidence that agrees with the state: settled) takes the shortest path.
    The alarm's texts are built only on an edge. `now` must be aware (`evaluate` checks it).
    """
    # Cached by identity, not equality: equal rules may still word their alarms differently ("30" and "30.0").
    # The entry holds the rule, so its id stays its own while cached.
    held = _STEPS.get(id(rule))
    if held is not None and held[0] is rule:
        return held[1]
    if len(_STEPS) >= 4096:
        _STEPS.clear()
    step = _compile_reading_step(rule)
    _STEPS[id(rule)] = (rule, step)
    return step


def _compile_reading_step(rule: ThresholdRule | FlagRule) -> ReadingStep:
    raise_after, clear_after, max_gap = rule.raise_after, rule.clear_after, rule.max_gap
    partial = ReadingFlag.PARTIAL
    trigger, release, hold = Evidence.TRIGGER, Evidence.RELEASE, Evidence.HOLD

    def decide(
        state: DebounceState, reading: Reading, evidence: Evidence, value: Decimal | None
    ) -> tuple[DebounceState, list[Decision]]:
        at = reading.sampled_at
        if evidence is not (release if state.active else trigger):
            return settled(state.active, at), []
        new = debounce(state, at, evidence, raise_after, clear_after, max_gap)
        if new.active is state.active:
            return new, []
        if not new.active:
            return new, [Clear(reading.meter_id, rule.slot)]
        return new, [_reading_raise(rule, reading, value)]

    if isinstance(rule, FlagRule):
        flag = rule.flag

        def flag_step(state: DebounceState, reading: Reading, now: datetime) -> tuple[DebounceState, list[Decision]]:
            at, last = reading.sampled_at, state.last_at
            if (last is not None and at <= last) or at > now + FUTURE_TOLERANCE:
                return state, []
            flags = reading.flags
            if flag in flags:
                return decide(state, reading, trigger, None)
            if partial in flags:
                return state, []
            return decide(state, reading, release, None)

        return flag_step

    gauge = GAUGES[rule.measure]
    gauge_flag, names, combine, above = gauge.flag, gauge.registers, gauge.combine, gauge.above
    single = names[0] if len(names) == 1 else None
    limit = rule.limit
    beyond = (
        (operator.ge if rule.inclusive else operator.gt) if above else (operator.le if rule.inclusive else operator.lt)
    )
    back_limit = limit - rule.margin if above else limit + rule.margin
    # Power factor means nothing near no load: below min_load (kW) it is not judged.
    min_load = rule.min_load if rule.min_load > 0 else None

    def threshold_step(state: DebounceState, reading: Reading, now: datetime) -> tuple[DebounceState, list[Decision]]:
        at, last = reading.sampled_at, state.last_at
        if (last is not None and at <= last) or at > now + FUTURE_TOLERANCE:
            return state, []
        if gauge_flag is not None and gauge_flag in reading.flags:
            return decide(state, reading, trigger, None)
        registers = reading.registers
        if single is not None:
            one = registers.get(single)
            values: Sequence[Decimal] = () if one is None else (one,)
        else:
            values = [registers[name] for name in names if name in registers]
        if not values:
            # A flag the meter can raise but did not is a healthy answer, unless the read set came back partial.
            if gauge_flag is not None and partial not in reading.flags:
                return decide(state, reading, release, None)
            return state, []
        if min_load is not None:
            load = registers.get(POWER_ACTIVE)
            if load is None or abs(load) < min_load:
                return state, []
        value = combine(values)
        if beyond(value, limit):
            return decide(state, reading, trigger, value)
        back = value <= back_limit if above else value >= back_limit
        return decide(state, reading, release if back else hold, value)

    return threshold_step


def _reading_raise(rule: ThresholdRule | FlagRule, reading: Reading, value: Decimal | None) -> Raise:
    at = {"at": iso(reading.sampled_at)}
    if isinstance(rule, FlagRule):
        zh, en = _FLAG_TEXT.get(rule.flag, (rule.flag.value, rule.flag.value))
        return Raise(reading.meter_id, rule.slot, rule.severity, zh, en, at)
    gauge = GAUGES[rule.measure]
    shown = "—" if value is None else f"{value}"
    return Raise(
        reading.meter_id,
        rule.slot,
        rule.severity,
        f"{gauge.name_zh}：{shown} {gauge.unit}（限值 {rule.limit} {gauge.unit}）",
        f"{gauge.name_en}: {shown} {gauge.unit} (limit {rule.limit} {gauge.unit})",
        {"value": shown, "limit": f"{rule.limit}", "unit": gauge.unit, **at},
    )
