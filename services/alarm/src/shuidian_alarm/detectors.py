"""Pure alarm detectors: (rule, state, observation, now) → (new state, alarms to raise or clear).

A rule is a frozen value configured per estate, building, meter model or meter (`ScopedRule`,
`resolve_rules`: per rule slot the most specific scope wins). Its state is a frozen value the service
keeps per (source, slot) and persists with `to_json` / `from_json`, so a duration condition survives a
restart. Nothing here does I/O or reads the clock; at most one alarm per (source, type) is ever open,
because a detector raises only on the edge from quiet to active and clears only on the way back.

Time. Durations of sampled conditions (reading values, hourly consumption, flow) run between observation
timestamps, so a replay raises exactly what live delivery raised; conditions on retained states
(online/offline, relay shadow) run against `now` and also mature on a `Tick`. An observation no newer than
the last one a state took in is ignored (out of order or duplicate), and so is one more than
`FUTURE_TOLERANCE` ahead of `now`, which would otherwise shut out every later observation.

Gaps. A sampled condition only holds across consecutive observations at most `max_gap` apart: a longer gap
restarts the pending duration at the next observation (no raise from data nobody saw) and never clears an
open alarm (no clear from silence either). Water flow has its own, documented on `WaterLeakRule`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from enum import Enum, StrEnum
from functools import cache, lru_cache
from types import MappingProxyType
from typing import Annotated, ClassVar, Final, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import Field, TypeAdapter

from shuidian_alarm.baselines import (
    DEFAULT_TIMEZONE,
    Bucket,
    Calendar,
    bucket_key,
    china_calendar,
    spike_limit,
    update_bucket,
)
from shuidian_alarm.rules import Clear, Decision, Raise
from shuidian_shared.messages import (
    CLOCK_OFFSET,
    RESIDUAL_CURRENT,
    AlarmSeverity,
    BalanceEvent,
    DeviceState,
    PollStats,
    Reading,
    ReadingFlag,
    RelayState,
    ValveState,
)

FUTURE_TOLERANCE: Final = timedelta(minutes=5)
HOUR: Final = timedelta(hours=1)
_ZERO: Final = timedelta(0)

# Canonical registers read here (the collector's canonical names and units).
VOLTAGES: Final = ("voltage_a", "voltage_b", "voltage_c")  # V
CURRENTS: Final = ("current_a", "current_b", "current_c")  # A
POWER_ACTIVE: Final = "power_active"  # kW, negative when exporting
POWER_FACTOR: Final = "power_factor"
WATER_VOLUME: Final = "water_volume_total"  # m³, cumulative
METER_BALANCE: Final = "balance_money"  # CNY, the meter's own remaining-money register
# Also read: RESIDUAL_CURRENT (mA) and CLOCK_OFFSET (s, meter clock minus collector clock) from shared.messages.

# Alarm types not named after a Measure or a ReadingFlag.
USAGE_SPIKE: Final = "usage_spike"
WATER_LEAK: Final = "water_leak"
GATEWAY_OFFLINE: Final = "gateway_offline"
METER_OFFLINE: Final = "meter_offline"
COMM_ERRORS: Final = "comm_errors"
SUPPLY_MISMATCH: Final = "supply_mismatch"
VACANT_USAGE: Final = "vacant_usage"
BALANCE_MISMATCH: Final = "balance_mismatch"
CONNECTIVITY: Final = "connectivity"  # the slot of ConnectivityRule, which raises GATEWAY_OFFLINE and METER_OFFLINE


# --- observations the service feeds in besides Reading and DeviceState -------------------------------------


def _aware(at: datetime) -> None:
    if at.tzinfo is UTC:  # the common case, checked first: this runs for every rule on every observation
        return
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")


@dataclass(frozen=True, kw_only=True)
class GatewayStatus:
    """The collector's link to a gateway came up or went down."""

    gateway_id: str
    online: bool
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True, kw_only=True)
class PollWindow:
    """A meter's poll transactions over [start, end): how many were tried and how many failed; `gateway_down`
    when the gateway itself was unreachable (then the failures are the gateway's, not the meter's)."""

    meter_id: str
    start: datetime
    end: datetime
    attempts: int
    failures: int
    gateway_down: bool = False

    def __post_init__(self) -> None:
        _aware(self.start)
        _aware(self.end)
        if self.end <= self.start:
            raise ValueError("a poll window must end after it starts")
        if not 0 <= self.failures <= self.attempts:
            raise ValueError("failures must lie between 0 and attempts")


@dataclass(frozen=True, kw_only=True)
class HourlyConsumption:
    """A meter's consumption over one hour starting at `hour_start` (kWh or m³)."""

    meter_id: str
    hour_start: datetime
    quantity: Decimal

    def __post_init__(self) -> None:
        _aware(self.hour_start)
        if self.quantity < 0:
            raise ValueError("consumption cannot be negative")


@dataclass(frozen=True, kw_only=True)
class LeaseStatus:
    """Whether the room a meter supplies has an active lease, as of `at`: since `since` (default `at`), in room
    `room_id`. `leased=None` with no room: the meter supplies no room now (unbound), so it counts for none."""

    meter_id: str
    leased: bool | None
    at: datetime
    since: datetime | None = None
    room_id: str | None = None

    def __post_init__(self) -> None:
        _aware(self.at)
        if self.since is not None:
            _aware(self.since)
        if self.room_id is not None and self.leased is None:
            raise ValueError("a meter bound to a room has a lease status")


@dataclass(frozen=True, kw_only=True)
class ServerBalance:
    """The server-side balance of the account that pays for a meter, as of `at`."""

    meter_id: str
    balance: Decimal
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True, kw_only=True)
class SupplyDesired:
    """The control shadow's desired supply for a meter (relay closed / valve open = on), from `at` on."""

    meter_id: str
    supply_on: bool
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True)
class Tick:
    """Time passed: lets conditions on retained states mature without a new observation."""


Observation = (
    Reading
    | DeviceState
    | GatewayStatus
    | PollWindow
    | HourlyConsumption
    | LeaseStatus
    | ServerBalance
    | SupplyDesired
    | Tick
)


def server_balances(event: BalanceEvent) -> list[ServerBalance]:
    """One ServerBalance per meter the account's balance supplies."""
    return [ServerBalance(meter_id=m.meter_id, balance=event.balance, at=event.occurred_at) for m in event.meters]


def poll_windows(stats: PollStats) -> list[PollWindow]:
    """One PollWindow per meter of a gateway's poll statistics."""
    return [
        PollWindow(
            meter_id=m.meter_id,
            start=stats.window_start,
            end=stats.window_end,
            attempts=m.attempts,
            failures=m.failures,
            gateway_down=stats.gateway_down,
        )
        for m in stats.meters
    ]


# --- debounce: duration and hysteresis shared by the sampled conditions -------------------------------------


class _Evidence(Enum):
    TRIGGER = "trigger"  # the alarm condition holds
    RELEASE = "release"  # back inside the band by the margin
    HOLD = "hold"  # inside the hysteresis band: breaks a pending raise or clear, decides nothing
    NONE = "none"  # says nothing about the condition


@dataclass(frozen=True, kw_only=True)
class DebounceState:
    """Whether an alarm is up, since when the evidence has pointed the other way, and the newest evidence."""

    kind: Literal["debounce"] = "debounce"
    active: bool = False
    since: datetime | None = None
    last_at: datetime | None = None


def _debounce(
    state: DebounceState,
    at: datetime,
    evidence: _Evidence,
    raise_after: timedelta,
    clear_after: timedelta,
    max_gap: timedelta | None,
    start: datetime | None = None,
) -> DebounceState:
    # `start` is when evidence covering a period (an hour of consumption) began; `at` when it ended.
    if evidence is _Evidence.NONE:
        return state
    toward = _Evidence.RELEASE if state.active else _Evidence.TRIGGER
    if evidence is not toward:
        return _settled(state.active, at)
    since = state.since
    if since is not None and max_gap is not None and state.last_at is not None and at - state.last_at > max_gap:
        since = None
    since = (start or at) if since is None else since
    if at - since >= (clear_after if state.active else raise_after):
        return DebounceState(active=not state.active, since=None, last_at=at)
    return DebounceState(active=state.active, since=since, last_at=at)


@lru_cache(maxsize=8)
def _settled(active: bool, at: datetime) -> DebounceState:
    # Nothing pending: the state of most rules after most readings. States are immutable values, so every
    # rule a reading left settled shares one (the service then builds and encodes it once per reading).
    return DebounceState(active=active, since=None, last_at=at)


def _fresh(last: datetime | None, at: datetime, now: datetime) -> bool:
    return (last is None or at > last) and at <= now + FUTURE_TOLERANCE


def _edge(
    was_active: bool, active: bool, raised: Callable[[], Raise], source_id: str, alarm_type: str
) -> list[Decision]:
    if active and not was_active:
        return [raised()]
    if was_active and not active:
        return [Clear(source_id, alarm_type)]
    return []


# --- reading thresholds and flags ----------------------------------------------------------------------------


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


_GAUGES: Final[Mapping[Measure, _Gauge]] = MappingProxyType(
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
    raise_after: timedelta = _ZERO
    clear_after: timedelta = HOUR
    max_gap: timedelta | None = None
    severity: AlarmSeverity = AlarmSeverity.WARNING

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
    trigger, release, hold = _Evidence.TRIGGER, _Evidence.RELEASE, _Evidence.HOLD

    def decide(
        state: DebounceState, reading: Reading, evidence: _Evidence, value: Decimal | None
    ) -> tuple[DebounceState, list[Decision]]:
        at = reading.sampled_at
        if evidence is not (release if state.active else trigger):
            return _settled(state.active, at), []
        new = _debounce(state, at, evidence, raise_after, clear_after, max_gap)
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

    gauge = _GAUGES[rule.measure]
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
    at = {"at": _iso(reading.sampled_at)}
    if isinstance(rule, FlagRule):
        zh, en = _FLAG_TEXT.get(rule.flag, (rule.flag.value, rule.flag.value))
        return Raise(reading.meter_id, rule.slot, rule.severity, zh, en, at)
    gauge = _GAUGES[rule.measure]
    shown = "—" if value is None else f"{value}"
    return Raise(
        reading.meter_id,
        rule.slot,
        rule.severity,
        f"{gauge.name_zh}：{shown} {gauge.unit}（限值 {rule.limit} {gauge.unit}）",
        f"{gauge.name_en}: {shown} {gauge.unit} (limit {rule.limit} {gauge.unit})",
        {"value": shown, "limit": f"{rule.limit}", "unit": gauge.unit, **at},
    )


# --- usage spike against the meter's own baseline ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SpikeRule:
    """An hour's consumption above max(ratio × baseline, baseline + floor) for its local hour and day type."""

    kind: Literal["spike"] = "spike"
    ratio: Decimal = Decimal(3)
    # Above the baseline, this much (kWh; set m³ for water meters) is never a spike, so near-silent hours stay quiet.
    floor: Decimal = Decimal("0.5")
    deviations: Decimal = Decimal(4)  # the floor widens to this many mean absolute deviations on erratic meters
    alpha: Decimal = Decimal("0.1")
    warmup_samples: int = 4  # per bucket: no spike before four workdays (or rest days) at that hour were seen
    clear_after: timedelta = timedelta(hours=2)
    calendar: Calendar = field(default_factory=Calendar)
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = USAGE_SPIKE  # the alarm type it raises; a more specific scope overrides it


@dataclass(frozen=True, kw_only=True)
class SpikeState:
    """The meter's baseline buckets, the spike alarm, and the newest hour taken in."""

    kind: Literal["spike"] = "spike"
    baseline: Mapping[str, Bucket] = field(default_factory=dict)
    alarm: DebounceState = DebounceState()
    last_hour: datetime | None = None


def _on_hourly_spike(
    rule: SpikeRule, state: SpikeState, usage: HourlyConsumption, now: datetime
) -> tuple[SpikeState, list[Decision]]:
    # Only an hour that has ended (give or take the tolerance) can be judged.
    if not _fresh(state.last_hour, usage.hour_start, now - HOUR):
        return state, []
    key = bucket_key(rule.calendar, usage.hour_start)
    bucket = state.baseline.get(key)
    evidence, sample, limit = _Evidence.NONE, usage.quantity, None
    if bucket is not None and bucket.samples >= rule.warmup_samples:
        limit = spike_limit(bucket, rule.ratio, rule.floor, rule.deviations)
        evidence = _Evidence.TRIGGER if usage.quantity > limit else _Evidence.RELEASE
        # A spike enters the baseline only up to the limit, so one burst does not teach the meter to expect bursts.
        sample = min(usage.quantity, limit)
    end = usage.hour_start + HOUR
    alarm = _debounce(state.alarm, end, evidence, _ZERO, rule.clear_after, HOUR, start=usage.hour_start)
    new = SpikeState(
        baseline={**state.baseline, key: update_bucket(bucket, sample, rule.alpha)},
        alarm=alarm,
        last_hour=usage.hour_start,
    )

    def raised() -> Raise:
        mean = "—" if bucket is None else f"{bucket.mean.normalize():f}"
        return Raise(
            usage.meter_id,
            USAGE_SPIKE,
            rule.severity,
            f"用量突增：{_iso_local(rule.calendar, usage.hour_start)} 起一小时用量 {usage.quantity}，平时约 {mean}",
            f"Usage spike: {usage.quantity} in the hour from {_iso_local(rule.calendar, usage.hour_start)}, usually about {mean}",
            {
                "quantity": f"{usage.quantity}",
                "baseline": mean,
                "limit": "—" if limit is None else f"{limit.normalize():f}",
                "hour_start": _iso(usage.hour_start),
            },
        )

    return new, _edge(state.alarm.active, alarm.active, raised, usage.meter_id, USAGE_SPIKE)


# --- water leak ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WaterLeakRule:
    """A leak: the night's minimum flow above a limit, or water that never stops for `continuous_for`.

    Flow is the volume register's delta over the interval between consecutive readings. An unchanged
    register proves zero flow for the whole interval, however long. A rise over an interval longer than
    `max_gap` proves some water ran but not that it never stopped: it neither extends nor resets a continuous
    run, ends a dry spell, and counts as no coverage of the night. A register that goes backwards (meter
    replaced, rollover) restarts the measurements. A night is judged once a reading arrives at or after its
    end, and only if readings covered `night_coverage` of it; the leak clears after `clear_after` of zero flow.
    """

    kind: Literal["water_leak"] = "water_leak"
    night_start: time = time(2)
    night_end: time = time(5)
    night_flow_limit: Decimal = Decimal("0.005")  # m³/h: 5 L/h through the quietest hours of the night
    night_coverage: Decimal = Decimal("0.8")
    continuous_for: timedelta = timedelta(hours=6)
    min_flow: Decimal = Decimal(0)  # m³/h; at or below counts as stopped
    clear_after: timedelta = HOUR
    max_gap: timedelta = HOUR
    timezone: str = DEFAULT_TIMEZONE
    severity: AlarmSeverity = AlarmSeverity.MAJOR
    slot: ClassVar[str] = WATER_LEAK  # the alarm type it raises; a more specific scope overrides it


@dataclass(frozen=True, kw_only=True)
class WaterLeakState:
    """The last volume reading, the running flow and dry spells, and the night being measured."""

    kind: Literal["water_leak"] = "water_leak"
    active: bool = False
    last_at: datetime | None = None
    last_volume: Decimal | None = None
    flowing: timedelta = _ZERO
    dry: timedelta = _ZERO
    night_start: datetime | None = None
    night_end: datetime | None = None
    night_min: Decimal | None = None
    night_covered: timedelta = _ZERO


def _nights(rule: WaterLeakRule, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    zone = ZoneInfo(rule.timezone)
    day = start.astimezone(zone).date() - timedelta(days=1)  # a night that crosses midnight began the day before
    last = end.astimezone(zone).date()
    crosses_midnight = rule.night_end <= rule.night_start
    while day <= last:
        night_start = datetime.combine(day, rule.night_start, tzinfo=zone).astimezone(UTC)
        end_day = day + timedelta(days=1) if crosses_midnight else day
        night_end = datetime.combine(end_day, rule.night_end, tzinfo=zone).astimezone(UTC)
        if min(end, night_end) > max(start, night_start):
            yield night_start, night_end
        day += timedelta(days=1)


def _judge_night(rule: WaterLeakRule, state: WaterLeakState) -> tuple[WaterLeakState, Decimal | None]:
    if state.night_start is None or state.night_end is None:
        return state, None
    covered = _seconds(state.night_covered) >= rule.night_coverage * _seconds(state.night_end - state.night_start)
    leaking = covered and state.night_min is not None and state.night_min > rule.night_flow_limit
    closed = replace(state, night_start=None, night_end=None, night_min=None, night_covered=_ZERO)
    return closed, (state.night_min if leaking else None)


def _on_water_reading(
    rule: WaterLeakRule, state: WaterLeakState, reading: Reading, now: datetime
) -> tuple[WaterLeakState, list[Decision]]:
    volume = reading.registers.get(WATER_VOLUME)
    at = reading.sampled_at
    if volume is None or not _fresh(state.last_at, at, now):
        return state, []
    start, before = state.last_at, state.last_volume
    new = replace(state, last_at=at, last_volume=volume)
    if start is None or before is None:
        return new, []
    delta, span = volume - before, at - start
    flow: Decimal | None = None
    if delta < 0:
        # A register going backwards is a replaced or rolled-over meter: nothing before it describes the flow now.
        new = WaterLeakState(active=new.active, last_at=at, last_volume=volume)
    elif delta == 0:
        flow = Decimal(0)
    elif span <= rule.max_gap:
        flow = delta / (_seconds(span) / 3600)
    else:
        new = replace(new, dry=_ZERO)
    night_leaks: list[Decimal] = []
    if flow is not None:
        if flow > rule.min_flow:
            new = replace(new, flowing=new.flowing + span, dry=_ZERO)
        else:
            new = replace(new, flowing=_ZERO, dry=new.dry + span)
        for night_start, night_end in _nights(rule, start, at):
            overlap = min(at, night_end) - max(start, night_start)
            if new.night_start != night_start:
                new, leak = _judge_night(rule, new)
                night_leaks += [] if leak is None else [leak]
                new = replace(new, night_start=night_start, night_end=night_end, night_min=flow, night_covered=overlap)
            else:
                lowest = flow if new.night_min is None else min(new.night_min, flow)
                new = replace(new, night_min=lowest, night_covered=new.night_covered + overlap)
    if new.night_end is not None and at >= new.night_end:
        new, leak = _judge_night(rule, new)
        night_leaks += [] if leak is None else [leak]

    meter = reading.meter_id
    if not new.active and (night_leaks or new.flowing >= rule.continuous_for):
        if night_leaks:
            night_flow = f"{night_leaks[-1].quantize(Decimal('0.0001'))}"
            zh = f"疑似漏水：夜间最小流量 {night_flow} m³/h（限值 {rule.night_flow_limit}）"
            en = f"Suspected water leak: minimum night flow {night_flow} m³/h (limit {rule.night_flow_limit})"
            details = {"reason": "night_flow", "min_flow": night_flow}
        else:
            hours = f"{(_seconds(new.flowing) / 3600).quantize(Decimal('0.1'))}"
            zh, en = (
                f"疑似漏水：已连续用水 {hours} 小时",
                f"Suspected water leak: water has run for {hours} h without a break",
            )
            details = {"reason": "continuous_flow", "hours": hours}
        details["at"] = _iso(at)
        return replace(new, active=True), [Raise(meter, WATER_LEAK, rule.severity, zh, en, details)]
    if new.active and new.dry >= rule.clear_after:
        return replace(new, active=False), [Clear(meter, WATER_LEAK)]
    return new, []


# --- connectivity: gateway as root cause of its meters' silence ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ConnectivityRule:
    """Gateway and meter offline alarms for one gateway; while the gateway is down its meters raise nothing new."""

    kind: Literal["connectivity"] = "connectivity"
    gateway_grace: timedelta = timedelta(minutes=5)
    # Longer than the gateway's grace, so meters that go quiet just before their gateway is declared down wait.
    meter_grace: timedelta = timedelta(minutes=15)
    # After the gateway returns, meters get this long (more than a poll cycle) to report in before they alarm.
    settle: timedelta = timedelta(minutes=10)
    recover_after: timedelta = timedelta(minutes=2)  # online this long before an offline alarm clears
    gateway_severity: AlarmSeverity = AlarmSeverity.MAJOR
    meter_severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = CONNECTIVITY  # what a more specific scope overrides; it raises both offline types


@dataclass(frozen=True, kw_only=True)
class Link:
    """A gateway's or meter's last known reachability and whether its offline alarm is open."""

    online: bool
    since: datetime  # when it last changed
    last_at: datetime  # the newest observation taken in
    alarmed: bool = False


@dataclass(frozen=True, kw_only=True)
class ConnectivityState:
    """One gateway's link and its meters' links."""

    kind: Literal["connectivity"] = "connectivity"
    gateway_id: str | None = None
    gateway: Link | None = None
    meters: Mapping[str, Link] = field(default_factory=dict)


def _relink(link: Link | None, online: bool, at: datetime, now: datetime) -> Link | None:
    if link is None:
        return Link(online=online, since=at, last_at=at) if at <= now + FUTURE_TOLERANCE else None
    if not _fresh(link.last_at, at, now):
        return link
    return replace(link, online=online, since=link.since if link.online == online else at, last_at=at)


def offline_decisions(
    rule: ConnectivityRule, state: ConnectivityState, now: datetime
) -> tuple[ConnectivityState, list[Decision]]:
    """One gateway alarm and no new meter alarms while it is down; meters still offline after it settles alarm."""
    decisions: list[Decision] = []
    gateway = state.gateway
    if gateway is not None and state.gateway_id is not None:
        if not gateway.online and not gateway.alarmed and now - gateway.since >= rule.gateway_grace:
            silent = sum(not m.online for m in state.meters.values())
            decisions.append(
                Raise(
                    state.gateway_id,
                    GATEWAY_OFFLINE,
                    rule.gateway_severity,
                    f"网关离线：其下 {len(state.meters)} 块表计无法抄读",
                    f"Gateway offline: its {len(state.meters)} meters cannot be read",
                    {"meters": f"{len(state.meters)}", "meters_offline": f"{silent}", "since": _iso(gateway.since)},
                )
            )
            gateway = replace(gateway, alarmed=True)
        elif gateway.online and gateway.alarmed and now - gateway.since >= rule.recover_after:
            decisions.append(Clear(state.gateway_id, GATEWAY_OFFLINE))
            gateway = replace(gateway, alarmed=False)
    judge_meters = gateway is None or (gateway.online and now - gateway.since >= rule.settle)
    meters = dict(state.meters)
    for meter_id, link in sorted(state.meters.items()):
        if link.online and link.alarmed and now - link.since >= rule.recover_after:
            decisions.append(Clear(meter_id, METER_OFFLINE))
            meters[meter_id] = replace(link, alarmed=False)
        elif not link.online and not link.alarmed and judge_meters and now - link.since >= rule.meter_grace:
            decisions.append(
                Raise(
                    meter_id,
                    METER_OFFLINE,
                    rule.meter_severity,
                    "表计离线：网关在线但表计无应答",
                    "Meter offline: its gateway is up but the meter does not answer",
                    {"gateway_id": state.gateway_id or "", "since": _iso(link.since)},
                )
            )
            meters[meter_id] = replace(link, alarmed=True)
    if not decisions:
        return state, []
    return replace(state, gateway=gateway, meters=meters), decisions


def _on_connectivity(
    rule: ConnectivityRule, state: ConnectivityState, observation: Observation, now: datetime
) -> tuple[ConnectivityState, list[Decision]]:
    if isinstance(observation, GatewayStatus):
        if state.gateway_id not in (None, observation.gateway_id):
            return state, []
        gateway = _relink(state.gateway, observation.online, observation.at, now)
        state = replace(state, gateway_id=observation.gateway_id, gateway=gateway)
    elif isinstance(observation, DeviceState):
        if state.gateway_id not in (None, observation.gateway_id):
            return state, []
        link = _relink(state.meters.get(observation.meter_id), observation.online, observation.occurred_at, now)
        if link is not None:
            meters = {**state.meters, observation.meter_id: link}
            state = replace(state, gateway_id=observation.gateway_id, meters=meters)
    elif not isinstance(observation, Tick):
        return state, []
    return offline_decisions(rule, state, now)


# --- communication error rate -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CommErrorRule:
    """Failed polls of a meter that still answers sometimes, above `raise_rate` over a sliding `window`; cleared
    at or below `clear_rate` (hysteresis: in between nothing changes).

    The collector reports counts per poll window (`PollWindow`), not one observation per poll. A window already
    counted, or one overlapping a counted window, is ignored: a redelivered or re-cut window would count the
    same polls twice. Windows may arrive out of order; one ending before the sliding window is ignored. Over a
    sliding window in which every poll failed nothing is decided here: a dead meter is the offline rule's
    alarm. Windows in which the gateway itself was down do not count either.
    """

    kind: Literal["comm_error"] = "comm_error"
    window: timedelta = HOUR
    raise_rate: Decimal = Decimal("0.2")
    clear_rate: Decimal = Decimal("0.05")
    min_attempts: int = 6
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = COMM_ERRORS  # the alarm type it raises; a more specific scope overrides it

    def __post_init__(self) -> None:
        if not self.clear_rate <= self.raise_rate:
            raise ValueError("clear_rate must not exceed raise_rate")


@dataclass(frozen=True, kw_only=True)
class PollCount:
    """Polls and failures of one counted window [start, end)."""

    start: datetime
    end: datetime
    attempts: int
    failures: int


@dataclass(frozen=True, kw_only=True)
class CommErrorState:
    """The windows counted inside the sliding window (oldest first), the newest window end, and the alarm."""

    kind: Literal["comm_error"] = "comm_error"
    counts: tuple[PollCount, ...] = ()
    last_at: datetime | None = None
    alarm: DebounceState = DebounceState()


def _on_poll(
    rule: CommErrorRule, state: CommErrorState, poll: PollWindow, now: datetime
) -> tuple[CommErrorState, list[Decision]]:
    if poll.gateway_down or poll.end > now + FUTURE_TOLERANCE:
        return state, []
    newest = poll.end if state.last_at is None else max(state.last_at, poll.end)
    if poll.end <= newest - rule.window or any(c.start < poll.end and poll.start < c.end for c in state.counts):
        return state, []
    counted = PollCount(start=poll.start, end=poll.end, attempts=poll.attempts, failures=poll.failures)
    counts = tuple(sorted([*(c for c in state.counts if c.end > newest - rule.window), counted], key=lambda c: c.start))
    attempts, failures = sum(c.attempts for c in counts), sum(c.failures for c in counts)
    rate = Decimal(failures) / attempts if attempts else Decimal(0)
    if attempts < rule.min_attempts or failures == attempts:
        evidence = _Evidence.NONE
    elif rate > rule.raise_rate:
        evidence = _Evidence.TRIGGER
    else:
        evidence = _Evidence.RELEASE if rate <= rule.clear_rate else _Evidence.HOLD
    alarm = _debounce(state.alarm, newest, evidence, _ZERO, _ZERO, None)
    percent = f"{(rate * 100).quantize(Decimal('0.1'))}"

    def raised() -> Raise:
        return Raise(
            poll.meter_id,
            COMM_ERRORS,
            rule.severity,
            f"通信不稳定：近 {_minutes(rule.window)} 分钟抄读失败率 {percent}%（{failures}/{attempts}）",
            f"Unreliable communication: {percent}% of polls failed in the last {_minutes(rule.window)} min ({failures}/{attempts})",
            {"failures": f"{failures}", "attempts": f"{attempts}", "rate": percent, "at": _iso(newest)},
        )

    new = CommErrorState(counts=counts, last_at=newest, alarm=alarm)
    return new, _edge(state.alarm.active, alarm.active, raised, poll.meter_id, COMM_ERRORS)


# --- relay / valve against the control shadow ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SupplyMismatchRule:
    """The relay or valve the meter reports differs from the shadow's desired supply for longer than `grace`."""

    kind: Literal["supply_mismatch"] = "supply_mismatch"
    grace: timedelta = timedelta(minutes=10)
    severity: AlarmSeverity = AlarmSeverity.MAJOR
    slot: ClassVar[str] = SUPPLY_MISMATCH  # the alarm type it raises; a more specific scope overrides it


@dataclass(frozen=True, kw_only=True)
class SupplyMismatchState:
    """Desired and reported supply with their times, since when they differ, and the alarm."""

    kind: Literal["supply_mismatch"] = "supply_mismatch"
    meter_id: str | None = None
    desired: bool | None = None
    desired_at: datetime | None = None
    reported: bool | None = None
    reported_at: datetime | None = None
    mismatch_since: datetime | None = None
    active: bool = False


def _supply_on(relay: RelayState | None, valve: ValveState | None) -> bool | None:
    # A moving, abnormal or unknown valve or relay is no answer either way.
    if relay is RelayState.CLOSED or valve is ValveState.OPEN:
        return True
    if relay is RelayState.OPEN or valve is ValveState.CLOSED:
        return False
    return None


def _on_supply(
    rule: SupplyMismatchRule, state: SupplyMismatchState, observation: Observation, now: datetime
) -> tuple[SupplyMismatchState, list[Decision]]:
    meter_id, desired, desired_at = state.meter_id, state.desired, state.desired_at
    reported, reported_at = state.reported, state.reported_at
    if isinstance(observation, SupplyDesired):
        if _fresh(desired_at, observation.at, now):
            meter_id, desired, desired_at = observation.meter_id, observation.supply_on, observation.at
    elif isinstance(observation, Reading | DeviceState):
        at = observation.sampled_at if isinstance(observation, Reading) else observation.occurred_at
        supply = _supply_on(observation.relay, observation.valve)
        if supply is not None and _fresh(reported_at, at, now):
            meter_id, reported, reported_at = observation.meter_id, supply, at
    elif not isinstance(observation, Tick):
        return state, []
    differ = desired is not None and reported is not None and desired != reported
    since: datetime | None = None
    if differ:
        # A mismatch starts when the later of the two sides changed; a repeated target does not restart it.
        later = max(t for t in (desired_at, reported_at) if t is not None)
        since = later if state.mismatch_since is None else state.mismatch_since
    new = state
    if (desired_at, reported_at, since, meter_id) != (
        state.desired_at,
        state.reported_at,
        state.mismatch_since,
        state.meter_id,
    ):
        # Built directly (not `replace`): this runs on every reading of every meter.
        new = SupplyMismatchState(
            meter_id=meter_id,
            desired=desired,
            desired_at=desired_at,
            reported=reported,
            reported_at=reported_at,
            mismatch_since=since,
            active=state.active,
        )
    meter = new.meter_id
    if meter is None:
        return new, []
    if differ and not new.active and since is not None and now - since >= rule.grace:
        want, got = ("通", "断") if new.desired else ("断", "通")
        want_en, got_en = ("on", "off") if new.desired else ("off", "on")
        return replace(new, active=True), [
            Raise(
                meter,
                SUPPLY_MISMATCH,
                rule.severity,
                f"表计通断状态与期望不符：期望{want}，实际{got}，已超过 {_minutes(rule.grace)} 分钟",
                f"Supply state does not match the shadow: wanted {want_en}, meter reports {got_en} for over {_minutes(rule.grace)} min",
                {"desired": want_en, "reported": got_en, "since": _iso(since)},
            )
        ]
    if new.active and not differ and new.desired is not None:
        return replace(new, active=False), [Clear(meter, SUPPLY_MISMATCH)]
    return new, []


# --- business: consumption without a lease, meter balance against server balance -----------------------------


@dataclass(frozen=True, kw_only=True)
class VacantUsageRule:
    """Consumption above `tolerance` in an hour of a room without an active lease."""

    kind: Literal["vacant_usage"] = "vacant_usage"
    tolerance: Decimal = Decimal("0.1")
    move_out_grace: timedelta = timedelta(hours=24)  # move-out inspection and cleaning use some power and water
    clear_after: timedelta = timedelta(hours=24)  # quiet hours before the alarm clears while still vacant
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = VACANT_USAGE  # the alarm type it raises; a more specific scope overrides it


@dataclass(frozen=True, kw_only=True)
class VacantUsageState:
    """The room the meter supplies, its lease status and since when, the newest hour taken in, and the alarm."""

    kind: Literal["vacant_usage"] = "vacant_usage"
    room_id: str | None = None
    leased: bool | None = None
    lease_since: datetime | None = None
    lease_at: datetime | None = None
    last_hour: datetime | None = None
    alarm: DebounceState = DebounceState()


def _on_vacancy(
    rule: VacantUsageRule, state: VacantUsageState, observation: Observation, now: datetime
) -> tuple[VacantUsageState, list[Decision]]:
    if isinstance(observation, LeaseStatus):
        moved = observation.room_id != state.room_id
        # Within one room a status no newer than the last is stale. A move to another room (or none) is the
        # service's verdict from every room's newest occupancy, which it orders itself; it only must not be ahead.
        if moved and observation.at > now + FUTURE_TOLERANCE:
            return state, []
        if not moved and not _fresh(state.lease_at, observation.at, now):
            return state, []
        if observation.since is not None:
            since: datetime | None = observation.since
        elif moved or state.leased != observation.leased:
            since = observation.at
        else:
            since = state.lease_since
        new = VacantUsageState(
            room_id=observation.room_id,
            leased=observation.leased,
            lease_since=since,
            lease_at=observation.at,
            last_hour=state.last_hour,
            alarm=state.alarm,
        )
        if state.alarm.active and observation.leased is not False:
            # A lease explains the consumption at once, and a meter that left the room no longer measures it.
            return replace(new, alarm=DebounceState()), [Clear(observation.meter_id, VACANT_USAGE)]
        return new, []
    if not isinstance(observation, HourlyConsumption) or not _fresh(
        state.last_hour, observation.hour_start, now - HOUR
    ):
        return state, []
    hour, quantity = observation.hour_start, observation.quantity
    evidence = _Evidence.NONE  # an hour before the latest lease change: its status is not known here
    if state.leased is not None and state.lease_since is not None:
        if state.leased and hour >= state.lease_since:
            evidence = _Evidence.RELEASE
        elif not state.leased and hour >= state.lease_since + rule.move_out_grace:
            evidence = _Evidence.TRIGGER if quantity > rule.tolerance else _Evidence.RELEASE
    alarm = _debounce(state.alarm, hour + HOUR, evidence, _ZERO, rule.clear_after, None, start=hour)
    new = replace(state, last_hour=hour, alarm=alarm)

    def raised() -> Raise:
        return Raise(
            observation.meter_id,
            VACANT_USAGE,
            rule.severity,
            f"无有效租约的房间出现用量：{quantity}（{_iso(hour)} 起一小时）",
            f"Consumption in a room without an active lease: {quantity} in the hour from {_iso(hour)}",
            {
                "quantity": f"{quantity}",
                "hour_start": _iso(hour),
                **({"room_id": state.room_id} if state.room_id else {}),
            },
        )

    return new, _edge(state.alarm.active, alarm.active, raised, observation.meter_id, VACANT_USAGE)


@dataclass(frozen=True, kw_only=True)
class BalanceMismatchRule:
    """The meter's remaining-money register and the server balance differ by more than `tolerance` for `grace`.

    Billing posts consumption hourly while the meter deducts as it goes, so `grace` must outlast a posting
    interval. Negative balances compare as zero: a meter register stops at zero where the ledger goes on.
    """

    kind: Literal["balance_mismatch"] = "balance_mismatch"
    tolerance: Decimal = Decimal("1.00")
    grace: timedelta = timedelta(hours=2)
    clear_after: timedelta = _ZERO
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = BALANCE_MISMATCH  # the alarm type it raises; a more specific scope overrides it


@dataclass(frozen=True, kw_only=True)
class BalanceMismatchState:
    """The newest meter register and server balance with their times, and the alarm."""

    kind: Literal["balance_mismatch"] = "balance_mismatch"
    meter_balance: Decimal | None = None
    meter_at: datetime | None = None
    server_balance: Decimal | None = None
    server_at: datetime | None = None
    alarm: DebounceState = DebounceState()


def _on_balances(
    rule: BalanceMismatchRule, state: BalanceMismatchState, observation: Observation, now: datetime
) -> tuple[BalanceMismatchState, list[Decision]]:
    # States are built directly (not `replace`): this runs on every reading with a remaining-money register.
    if isinstance(observation, Reading):
        value = observation.registers.get(METER_BALANCE)
        if value is None or not _fresh(state.meter_at, observation.sampled_at, now):
            return state, []
        new = BalanceMismatchState(
            meter_balance=value,
            meter_at=observation.sampled_at,
            server_balance=state.server_balance,
            server_at=state.server_at,
            alarm=state.alarm,
        )
    elif isinstance(observation, ServerBalance):
        if not _fresh(state.server_at, observation.at, now):
            return state, []
        new = BalanceMismatchState(
            meter_balance=state.meter_balance,
            meter_at=state.meter_at,
            server_balance=observation.balance,
            server_at=observation.at,
            alarm=state.alarm,
        )
    else:
        return state, []
    if new.meter_balance is None or new.server_balance is None or new.meter_at is None or new.server_at is None:
        return new, []
    meter, server = max(new.meter_balance, Decimal(0)), max(new.server_balance, Decimal(0))
    evidence = _Evidence.TRIGGER if abs(meter - server) > rule.tolerance else _Evidence.RELEASE
    at = max(new.meter_at, new.server_at)
    alarm = _debounce(new.alarm, at, evidence, rule.grace, rule.clear_after, None)

    def raised() -> Raise:
        return Raise(
            observation.meter_id,
            BALANCE_MISMATCH,
            rule.severity,
            f"表内余额 {new.meter_balance} 元与系统余额 {new.server_balance} 元不一致",
            f"Meter balance {new.meter_balance} CNY disagrees with the server balance {new.server_balance} CNY",
            {"meter_balance": f"{new.meter_balance}", "server_balance": f"{new.server_balance}"},
        )

    if alarm is not new.alarm:
        new = replace(new, alarm=alarm)
    return new, _edge(state.alarm.active, alarm.active, raised, observation.meter_id, BALANCE_MISMATCH)


# --- evaluation --------------------------------------------------------------------------------------------

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
    _aware(now)
    match rule:
        case ThresholdRule() | FlagRule():
            debounce = state if type(state) is DebounceState else _expect(state, DebounceState)
            if isinstance(observation, Reading):
                return reading_step(rule)(debounce, observation, now)
            return debounce, []
        case SpikeRule():
            spike = _expect(state, SpikeState)
            if isinstance(observation, HourlyConsumption):
                return _on_hourly_spike(rule, spike, observation, now)
            return spike, []
        case WaterLeakRule():
            water = _expect(state, WaterLeakState)
            if isinstance(observation, Reading):
                return _on_water_reading(rule, water, observation, now)
            return water, []
        case ConnectivityRule():
            return _on_connectivity(rule, _expect(state, ConnectivityState), observation, now)
        case CommErrorRule():
            comm = _expect(state, CommErrorState)
            if isinstance(observation, PollWindow):
                return _on_poll(rule, comm, observation, now)
            return comm, []
        case SupplyMismatchRule():
            return _on_supply(rule, _expect(state, SupplyMismatchState), observation, now)
        case VacantUsageRule():
            return _on_vacancy(rule, _expect(state, VacantUsageState), observation, now)
        case BalanceMismatchRule():
            return _on_balances(rule, _expect(state, BalanceMismatchState), observation, now)


def source_of(rule: Rule, observation: Observation) -> str | None:
    """The source whose state `observation` feeds under `rule` (the gateway for connectivity, else the meter)."""
    if isinstance(rule, ConnectivityRule):
        return observation.gateway_id if isinstance(observation, GatewayStatus | DeviceState) else None
    feeds: tuple[
        type[Reading | DeviceState | PollWindow | HourlyConsumption | LeaseStatus | ServerBalance | SupplyDesired], ...
    ]
    match rule:
        case ThresholdRule() | FlagRule() | WaterLeakRule():
            feeds = (Reading,)
        case SpikeRule():
            feeds = (HourlyConsumption,)
        case CommErrorRule():
            feeds = (PollWindow,)
        case SupplyMismatchRule():
            feeds = (SupplyDesired, Reading, DeviceState)
        case VacantUsageRule():
            feeds = (LeaseStatus, HourlyConsumption)
        case BalanceMismatchRule():
            feeds = (ServerBalance, Reading)
    if isinstance(observation, GatewayStatus | Tick) or not isinstance(observation, feeds):
        return None
    return observation.meter_id


def skips(rule: Rule, registers: Collection[str], flags: Collection[ReadingFlag]) -> bool:
    """Whether a reading with these registers and flags, whatever their values, leaves the rule's state as it
    is and decides nothing, so the service need not evaluate the rule on it at all. False when unsure."""
    match rule:
        case ThresholdRule():
            gauge = _GAUGES[rule.measure]
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
    return isinstance(rule, ConnectivityRule | SupplyMismatchRule)


# --- scopes -------------------------------------------------------------------------------------------------


class ScopeLevel(StrEnum):
    DEFAULT = "default"
    ESTATE = "estate"
    BUILDING = "building"
    MODEL = "model"  # meter model (device profile)
    METER = "meter"


# Least to most specific. A model setting beats a building's: it describes what the hardware is rated for.
PRECEDENCE: Final = (ScopeLevel.DEFAULT, ScopeLevel.ESTATE, ScopeLevel.BUILDING, ScopeLevel.MODEL, ScopeLevel.METER)


@dataclass(frozen=True, kw_only=True)
class ScopeTarget:
    """What a meter (or a gateway: estate and building only) belongs to."""

    estate_id: str | None = None
    building_id: str | None = None
    model: str | None = None
    meter_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class RuleScope:
    """Where a rule applies: everywhere, or one estate, building, meter model or meter."""

    level: ScopeLevel
    key: str = ""

    def __post_init__(self) -> None:
        if (self.level is ScopeLevel.DEFAULT) != (self.key == ""):
            raise ValueError("the default scope has no key; every other scope needs one")

    def applies_to(self, target: ScopeTarget) -> bool:
        """Whether a meter or gateway described by `target` falls inside this scope."""
        match self.level:
            case ScopeLevel.DEFAULT:
                return True
            case ScopeLevel.ESTATE:
                return self.key == target.estate_id
            case ScopeLevel.BUILDING:
                return self.key == target.building_id
            case ScopeLevel.MODEL:
                return self.key == target.model
            case ScopeLevel.METER:
                return self.key == target.meter_id


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
            raise_after=_ZERO,
            severity=AlarmSeverity.CRITICAL,
        ),
        ThresholdRule(measure=Measure.CLOCK_DRIFT, limit=Decimal("300"), margin=Decimal("30"), raise_after=_ZERO),
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


# --- persistence --------------------------------------------------------------------------------------------


@cache
def _states() -> TypeAdapter[RuleState]:
    return TypeAdapter(Annotated[RuleState, Field(discriminator="kind")])


@cache
def _rules() -> TypeAdapter[Rule]:
    return TypeAdapter(Annotated[Rule, Field(discriminator="kind")])


def to_json(state: RuleState) -> str:
    """A rule state as JSON (decimal strings, ISO 8601 times and durations)."""
    return _states().dump_json(state).decode()


def from_json(raw: str | bytes) -> RuleState:
    """A rule state back from `to_json`; raises pydantic's ValidationError on anything else."""
    return _states().validate_json(raw)


def rule_to_json(rule: Rule) -> str:
    """A rule's configuration as JSON."""
    return _rules().dump_json(rule).decode()


def rule_from_json(raw: str | bytes) -> Rule:
    """A rule back from `rule_to_json`; raises pydantic's ValidationError on anything else."""
    return _rules().validate_json(raw)


# --- formatting ---------------------------------------------------------------------------------------------


def _seconds(span: timedelta) -> Decimal:
    # Exact, unlike timedelta.total_seconds(), which is a float.
    return Decimal(span.days * 86400 + span.seconds) + Decimal(span.microseconds) / 1_000_000


def _minutes(span: timedelta) -> str:
    return f"{(_seconds(span) / 60).normalize():f}"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _iso_local(calendar: Calendar, at: datetime) -> str:
    return calendar.local(at).strftime("%Y-%m-%d %H:%M")
