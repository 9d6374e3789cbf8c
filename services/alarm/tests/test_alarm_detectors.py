"""Alarm detectors, hostile: flapping values, gaps, reordering, restarts mid-condition, a gateway taking 30 meters down."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from random import Random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shuidian_alarm.domain.baselines import Calendar
from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.detectors import connectivity, thresholds
from shuidian_alarm.domain.detectors.balance import METER_BALANCE, BalanceMismatchRule
from shuidian_alarm.domain.detectors.comm_errors import COMM_ERRORS, CommErrorRule, CommErrorState
from shuidian_alarm.domain.detectors.connectivity import (
    GATEWAY_OFFLINE,
    METER_OFFLINE,
    ConnectivityRule,
    ConnectivityState,
)
from shuidian_alarm.domain.detectors.debounce import DebounceState
from shuidian_alarm.domain.detectors.spike import USAGE_SPIKE, SpikeRule, SpikeState
from shuidian_alarm.domain.detectors.supply import SUPPLY_MISMATCH, SupplyMismatchRule
from shuidian_alarm.domain.detectors.thresholds import (
    CURRENTS,
    POWER_ACTIVE,
    VOLTAGES,
    FlagRule,
    Measure,
    ThresholdRule,
)
from shuidian_alarm.domain.detectors.vacancy import VacantUsageRule, VacantUsageState
from shuidian_alarm.domain.detectors.water import WATER_LEAK, WATER_VOLUME, WaterLeakRule, WaterLeakState
from shuidian_alarm.domain.observations import (
    GatewayStatus,
    HourlyConsumption,
    LeaseStatus,
    Observation,
    PollWindow,
    ServerBalance,
    SupplyDesired,
    Tick,
    server_balances,
)
from shuidian_alarm.domain.rules import (
    Rule,
    RuleState,
    ScopedRule,
    default_rules,
    evaluate,
    needs_ticks,
    resolve_rules,
    rule_from_json,
    rule_to_json,
    skips,
    source_of,
)
from shuidian_alarm.domain.scopes import RuleScope, ScopeLevel, ScopeTarget
from shuidian_alarm.domain.states import StateEncoder, decode_states
from shuidian_alarm.domain.usage import SLOT, HourlyState, accumulate
from shuidian_shared.messages import (
    CLOCK_OFFSET,
    RESIDUAL_CURRENT,
    AlarmSeverity,
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    DeviceState,
    MeterRef,
    PollCounts,
    Reading,
    ReadingFlag,
    RelayState,
    Utility,
    ValveState,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
METER = "m-0001"
GATEWAY = "gw-01"

Step = tuple[datetime, Observation]
Outcome = list[tuple[datetime, Decision]]


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Shanghai wall-clock instant, as aware UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


T0 = local(2024, 3, 4, 9)  # Monday morning


def reading(
    at: datetime,
    meter: str = METER,
    utility: Utility = Utility.ELECTRICITY,
    flags: Sequence[ReadingFlag] = (),
    relay: RelayState | None = None,
    valve: ValveState | None = None,
    **registers: str,
) -> Reading:
    return Reading.create(
        meter,
        utility,
        at,
        registers={name: Decimal(value) for name, value in registers.items()},
        flags=frozenset(flags),
        relay=relay,
        valve=valve,
    )


def device(
    meter: str, online: bool, at: datetime, gateway: str = GATEWAY, relay: RelayState | None = None
) -> DeviceState:
    return DeviceState(
        source="collector-test", meter_id=meter, gateway_id=gateway, online=online, occurred_at=at, relay=relay
    )


def time_of(observation: Observation) -> datetime:
    match observation:
        case Reading():
            return observation.sampled_at
        case DeviceState():
            return observation.occurred_at
        case HourlyConsumption():
            return observation.hour_start + HOUR
        case GatewayStatus() | LeaseStatus() | ServerBalance() | SupplyDesired():
            return observation.at
        case PollWindow():
            return observation.end
    raise AssertionError("a Tick has no time of its own")


def live(observations: Sequence[Observation]) -> list[Step]:
    """Deliver each observation as it happens."""
    return [(time_of(o), o) for o in observations]


def run(rule: Rule, steps: Sequence[Step], *, restart: bool = False) -> tuple[RuleState | None, Outcome]:
    """Evaluate steps in order; with `restart`, persist and reload the state before every step."""
    state: RuleState | None = None
    outcome: Outcome = []
    for now, observation in steps:
        if restart and state is not None:
            state = reloaded(state)
        state, decisions = evaluate(rule, state, observation, now)
        outcome += [(now, decision) for decision in decisions]
    return state, outcome


def stored(state: RuleState) -> str:
    """A state as the service writes it in its source's row (there, one slot among the source's others)."""
    return StateEncoder().encode("source", {"slot": state})


def reloaded(state: RuleState) -> RuleState:
    """A state written as the service writes it and read back as it reads it after a restart."""
    back = decode_states(stored(state))["slot"]
    assert not isinstance(back, HourlyState)
    return back


def edges(outcome: Outcome) -> list[tuple[str, str, str]]:
    return [("raise" if isinstance(x, Raise) else "clear", x.source_id, x.alarm_type) for _, x in outcome]


def when(outcome: Outcome) -> list[tuple[str, datetime]]:
    return [("raise" if isinstance(x, Raise) else "clear", at) for at, x in outcome]


# --- thresholds, flags, hysteresis ---------------------------------------------------------------------------

VOLTAGE = ThresholdRule(measure=Measure.OVER_VOLTAGE, limit=Decimal("235.4"), margin=Decimal("2.2"))
UNDER = ThresholdRule(measure=Measure.UNDER_VOLTAGE, limit=Decimal("198"), margin=Decimal("2.2"))
CURRENT = ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal("60"), margin=Decimal("3"))
OVERLOAD = ThresholdRule(measure=Measure.OVERLOAD, limit=Decimal("13.2"), margin=Decimal("0.5"))
REVERSE = ThresholdRule(measure=Measure.REVERSE_POWER, limit=Decimal("0.05"), margin=Decimal("0.02"))
POWER_FACTOR = ThresholdRule(
    measure=Measure.LOW_POWER_FACTOR, limit=Decimal("0.5"), margin=Decimal("0.05"), min_load=Decimal("0.2")
)
# The default leakage rule itself: its 30 mA limit is inclusive (a household RCD's IΔn; the collector's flag).
(LEAKAGE,) = (s.rule for s in default_rules() if s.rule.slot == "electric_leakage")
EXCLUSIVE_LEAKAGE = ThresholdRule(
    measure=Measure.ELECTRIC_LEAKAGE, limit=Decimal(30), margin=Decimal(5), raise_after=timedelta(0)
)
INCLUSIVE_UNDER = replace(UNDER, inclusive=True, raise_after=timedelta(0))
DRIFT = ThresholdRule(measure=Measure.CLOCK_DRIFT, limit=Decimal(300), margin=Decimal(30), raise_after=timedelta(0))
TAMPER = FlagRule(flag=ReadingFlag.TAMPER)

Sample = tuple[dict[str, str], tuple[ReadingFlag, ...]]


def per_minute(samples: Sequence[Sample], start: datetime = T0) -> list[Step]:
    return live(
        [
            Reading.create(
                METER,
                Utility.ELECTRICITY,
                start + i * MINUTE,
                registers={name: Decimal(value) for name, value in registers.items()},
                flags=frozenset(flags),
            )
            for i, (registers, flags) in enumerate(samples)
        ]
    )


def v(value: str, n: int = 1) -> list[Sample]:
    return [({"voltage_a": value}, ())] * n


def regs(n: int = 1, *flags: ReadingFlag, **registers: str) -> list[Sample]:
    return [(registers, flags)] * n


THRESHOLD_CASES: list[tuple[str, Rule, list[Sample], list[tuple[str, int]]]] = [
    # (case, rule, one sample a minute, expected (edge, minute))
    ("held five minutes raises once", VOLTAGE, v("240", 10), [("raise", 5)]),
    ("four minutes is not enough", VOLTAGE, v("240", 5) + v("230", 5), []),
    ("flapping around the limit never raises", VOLTAGE, (v("236") + v("234")) * 60, []),
    (
        "flapping inside the band after a raise never clears",
        VOLTAGE,
        v("240", 6) + (v("234") + v("236") + v("233.3")) * 40,
        [("raise", 5)],
    ),
    (
        "clear needs the margin held for five minutes",
        VOLTAGE,
        v("240", 6) + v("233.2", 4) + v("234") + v("233.2", 6),
        [("raise", 5), ("clear", 16)],
    ),
    ("under-voltage", UNDER, v("190", 6) + v("199", 10) + v("200.2", 6), [("raise", 5), ("clear", 21)]),
    (
        "phase loss on a three-phase meter is under-voltage",
        UNDER,
        regs(6, voltage_a="220", voltage_b="0", voltage_c="221"),
        [("raise", 5)],
    ),
    ("over-current on any phase", CURRENT, regs(6, current_a="10", current_b="65", current_c="12"), [("raise", 5)]),
    ("overload", OVERLOAD, regs(6, power_active="14") + regs(6, power_active="12.7"), [("raise", 5), ("clear", 11)]),
    ("reverse power from the register", REVERSE, regs(6, power_active="-0.2"), [("raise", 5)]),
    ("reverse power from the flag", REVERSE, regs(6, ReadingFlag.POWER_REVERSED), [("raise", 5)]),
    (
        "reverse flag gone clears even without a power register",
        REVERSE,
        regs(6, ReadingFlag.POWER_REVERSED) + regs(6),
        [("raise", 5), ("clear", 11)],
    ),
    ("low power factor under load", POWER_FACTOR, regs(6, power_factor="0.3", power_active="1.0"), [("raise", 5)]),
    ("power factor at no load is not judged", POWER_FACTOR, regs(20, power_factor="0.1", power_active="0.05"), []),
    ("leakage raises at once", LEAKAGE, regs(1, residual_current="45"), [("raise", 0)]),
    ("leakage flag raises at once", LEAKAGE, regs(1, ReadingFlag.LEAKAGE), [("raise", 0)]),
    (
        "leakage flag gone clears without a residual-current register",
        LEAKAGE,
        regs(2, ReadingFlag.LEAKAGE) + regs(8),
        [("raise", 0), ("clear", 7)],
    ),
    (
        "a partial read without the flag says nothing about leakage",
        LEAKAGE,
        regs(1, ReadingFlag.LEAKAGE) + regs(5, ReadingFlag.PARTIAL),
        [("raise", 0)],
    ),
    ("residual current at exactly 30 mA is leakage", LEAKAGE, regs(1, residual_current="30"), [("raise", 0)]),
    ("residual current of 29.9 mA is not leakage", LEAKAGE, regs(5, residual_current="29.9"), []),
    ("an exclusive limit is not reached at the limit", EXCLUSIVE_LEAKAGE, regs(5, residual_current="30"), []),
    ("an inclusive lower limit is reached at the limit", INCLUSIVE_UNDER, v("198"), [("raise", 0)]),
    ("an exclusive lower limit is not reached at the limit", replace(INCLUSIVE_UNDER, inclusive=False), v("198"), []),
    (
        "leakage clears once below limit minus margin",
        LEAKAGE,
        regs(1, residual_current="45") + regs(3, residual_current="28") + regs(6, residual_current="20"),
        [("raise", 0), ("clear", 9)],
    ),
    ("clock drift either way", DRIFT, regs(1, clock_offset_s="-400"), [("raise", 0)]),
    (
        "clock drift clears inside limit minus margin",
        DRIFT,
        regs(1, clock_offset_s="301") + regs(3, clock_offset_s="280") + regs(6, clock_offset_s="-12"),
        [("raise", 0), ("clear", 9)],
    ),
    ("clock drift flag", DRIFT, regs(1, ReadingFlag.CLOCK_DRIFT), [("raise", 0)]),
    ("tamper raises at once", TAMPER, regs(1, ReadingFlag.TAMPER) + regs(30), [("raise", 0)]),
    (
        "tamper clears after an hour without the flag",
        TAMPER,
        regs(1, ReadingFlag.TAMPER) + regs(61),
        [("raise", 0), ("clear", 61)],
    ),
    (
        "a partial reading is no proof the flag is gone",
        TAMPER,
        regs(1, ReadingFlag.TAMPER) + regs(90, ReadingFlag.PARTIAL),
        [("raise", 0)],
    ),
    (
        "readings without the register say nothing",
        VOLTAGE,
        v("240", 3) + regs(10, current_a="5") + v("240", 3),
        [("raise", 13)],
    ),
]


@pytest.mark.parametrize(
    ("rule", "samples", "expected"), [c[1:] for c in THRESHOLD_CASES], ids=[c[0] for c in THRESHOLD_CASES]
)
def test_thresholds_and_flags(rule: Rule, samples: list[Sample], expected: list[tuple[str, int]]) -> None:
    _, outcome = run(rule, per_minute(samples))
    assert when(outcome) == [(edge, T0 + minute * MINUTE) for edge, minute in expected]
    assert all(x.alarm_type == rule.slot and x.source_id == METER for _, x in outcome)


def test_threshold_raise_carries_value_and_severity() -> None:
    rule = replace(VOLTAGE, severity=AlarmSeverity.MAJOR)
    _, outcome = run(rule, per_minute(v("241.5", 6)))
    [(_, raised)] = outcome
    assert isinstance(raised, Raise)
    assert (raised.severity, raised.details["value"], raised.details["limit"]) == (
        AlarmSeverity.MAJOR,
        "241.5",
        "235.4",
    )
    assert "241.5" in raised.message_zh
    assert "241.5" in raised.message_en


def test_gap_restarts_a_pending_raise_and_never_clears() -> None:
    steps = live(
        [
            reading(T0, voltage_a="240"),
            reading(T0 + 4 * MINUTE, voltage_a="240"),
            # 40 minutes of silence (> max_gap 30): the condition is not known to have held through it.
            reading(T0 + 44 * MINUTE, voltage_a="240"),
            reading(T0 + 48 * MINUTE, voltage_a="240"),
            reading(T0 + 49 * MINUTE, voltage_a="240"),
            # Silent for three hours while the alarm is up: silence clears nothing.
            reading(T0 + 4 * HOUR, voltage_a="240"),
            reading(T0 + 4 * HOUR + 10 * MINUTE, voltage_a="230"),
            # The gap also restarts a pending clear.
            reading(T0 + 5 * HOUR, voltage_a="230"),
            reading(T0 + 5 * HOUR + 5 * MINUTE, voltage_a="230"),
        ]
    )
    _, outcome = run(VOLTAGE, steps)
    assert when(outcome) == [("raise", T0 + 49 * MINUTE), ("clear", T0 + 5 * HOUR + 5 * MINUTE)]


def test_out_of_order_duplicate_and_future_readings_are_ignored() -> None:
    clean = per_minute(v("240", 7))
    hostile: list[Step] = []
    for i, step in enumerate(clean):
        hostile.append(step)
        if i == 2:
            stale = reading(T0 + MINUTE + timedelta(seconds=30), voltage_a="220")
            hostile.append((step[0], stale))  # older than the newest: would reset the run
            hostile.append(step)  # duplicate
            far = reading(T0 + timedelta(days=1), voltage_a="220")
            hostile.append((step[0], far))  # from a meter clock a day ahead: would shut out every later reading
    assert run(VOLTAGE, hostile)[1] == run(VOLTAGE, clean)[1]
    assert len(run(VOLTAGE, clean)[1]) == 1


# --- usage spike ---------------------------------------------------------------------------------------------


def kwh(curve: str) -> list[Decimal]:
    return [Decimal(x) for x in curve.split()]


WORKDAY_KWH = kwh("0.2 0.1 0.1 0.1 0.1 0.2 0.6 0.9 0.5 0.3 0.3 0.4 0.6 0.4 0.3 0.3 0.4 0.7 1.2 1.5 1.4 1.1 0.7 0.4")
REST_KWH = kwh("0.3 0.2 0.1 0.1 0.1 0.1 0.2 0.4 0.8 0.9 0.8 0.9 1.0 0.8 0.7 0.7 0.8 1.0 1.3 1.4 1.3 1.2 0.9 0.5")
SPIKE = SpikeRule()
MONDAY = date(2024, 3, 4)


def hours(first: date, days: int, usage: Callable[[datetime], Decimal], meter: str = METER) -> list[HourlyConsumption]:
    start = local(first.year, first.month, first.day)
    return [
        HourlyConsumption(meter_id=meter, hour_start=start + i * HOUR, quantity=usage(start + i * HOUR))
        for i in range(days * 24)
    ]


def ordinary(calendar: Calendar = SPIKE.calendar) -> Callable[[datetime], Decimal]:
    def usage(hour_start: datetime) -> Decimal:
        wall = calendar.local(hour_start)
        workday = calendar.day_type(wall.date()).value == "workday"
        return (WORKDAY_KWH if workday else REST_KWH)[wall.hour]

    return usage


def test_spike_after_warm_up_raises_and_clears_after_two_ordinary_hours() -> None:
    base = ordinary()
    spike_at = local(2024, 3, 26, 14)  # Tuesday of the fourth week

    def usage(hour_start: datetime) -> Decimal:
        return Decimal("6.5") if hour_start == spike_at else base(hour_start)

    _, outcome = run(SPIKE, live(hours(MONDAY, 28, usage)))
    assert edges(outcome) == [("raise", METER, USAGE_SPIKE), ("clear", METER, USAGE_SPIKE)]
    assert when(outcome) == [("raise", spike_at + HOUR), ("clear", spike_at + 3 * HOUR)]
    raised = outcome[0][1]
    assert isinstance(raised, Raise)
    assert (raised.details["quantity"], raised.details["baseline"], raised.details["limit"]) == ("6.5", "0.3", "0.9")


def test_no_spike_during_warm_up() -> None:
    # Tuesday is only the second workday: every workday bucket has one sample.
    spike_at = local(2024, 3, 5, 14)
    base = ordinary()
    _, outcome = run(SPIKE, live(hours(MONDAY, 3, lambda h: Decimal(20) if h == spike_at else base(h))))
    assert outcome == []


def test_spike_that_flaps_every_other_hour_raises_once() -> None:
    base = ordinary()
    day = local(2024, 3, 26)

    def usage(hour_start: datetime) -> Decimal:
        odd_hour = day <= hour_start < day + 24 * HOUR and (hour_start - day) // HOUR % 2 == 1
        return Decimal(8) if odd_hour else base(hour_start)

    _, outcome = run(SPIKE, live(hours(MONDAY, 27, usage)))
    # One alarm for the whole flapping day, cleared by the first two ordinary hours after it.
    assert when(outcome) == [("raise", day + 2 * HOUR), ("clear", day + 26 * HOUR)]


def test_spike_does_not_poison_the_baseline() -> None:
    base = ordinary()
    first, second = local(2024, 3, 26, 14), local(2024, 3, 27, 14)
    state, outcome = run(SPIKE, live(hours(MONDAY, 24 + 3, lambda h: Decimal(50) if h in (first, second) else base(h))))
    assert isinstance(state, SpikeState)
    # Both days spiked at 14:00; the second is still seen as a spike because the first entered only up to the limit.
    assert [at for edge, at in when(outcome) if edge == "raise"] == [first + HOUR, second + HOUR]
    assert state.baseline["workday:14"].mean < Decimal(2)


def test_a_missing_hour_or_a_replayed_hour_changes_nothing_wrongly() -> None:
    base = ordinary()
    spike_at = local(2024, 3, 26, 14)
    usage = hours(MONDAY, 28, lambda h: Decimal(9) if h == spike_at else base(h))
    steps = live(usage)
    index = next(i for i, (_, o) in enumerate(steps) if isinstance(o, HourlyConsumption) and o.hour_start == spike_at)
    # The hour after the spike goes missing: the clear waits for two consecutive ordinary hours after the gap.
    gapped = steps[: index + 1] + steps[index + 2 :]
    replayed = [*steps[: index + 3], steps[index], *steps[index + 3 :]]
    assert when(run(SPIKE, gapped)[1]) == [("raise", spike_at + HOUR), ("clear", spike_at + 4 * HOUR)]
    assert when(run(SPIKE, replayed)[1]) == [("raise", spike_at + HOUR), ("clear", spike_at + 3 * HOUR)]


def test_an_hour_not_yet_over_is_ignored() -> None:
    usage = HourlyConsumption(meter_id=METER, hour_start=T0, quantity=Decimal(1))
    state, _ = evaluate(SPIKE, None, usage, T0 + 30 * MINUTE)
    assert state == SpikeState()


@settings(max_examples=40, deadline=None)
@given(
    workday=st.lists(st.integers(0, 400), min_size=24, max_size=24),
    rest=st.lists(st.integers(0, 400), min_size=24, max_size=24),
    holidays=st.sets(st.integers(0, 34), max_size=5),
    rng=st.randoms(use_true_random=False),
)
def test_ordinary_days_never_spike(workday: list[int], rest: list[int], holidays: set[int], rng: Random) -> None:
    # Any daily curve, workdays and rest days (holidays included) each with their own, ±30 % from day to day.
    calendar = Calendar(holidays=frozenset(MONDAY + timedelta(days=n) for n in holidays))
    rule = SpikeRule(calendar=calendar)

    def usage(hour_start: datetime) -> Decimal:
        wall = calendar.local(hour_start)
        curve = workday if calendar.day_type(wall.date()).value == "workday" else rest
        return Decimal(curve[wall.hour]) / 100 * Decimal(rng.randint(70, 130)) / 100

    _, outcome = run(rule, live(hours(MONDAY, 35, usage)))
    assert outcome == []


# --- water leak ----------------------------------------------------------------------------------------------

LEAK = WaterLeakRule()
NIGHT_ONLY = WaterLeakRule(continuous_for=timedelta(days=7))


def water(
    start: datetime,
    end: datetime,
    flow: Callable[[datetime], Decimal],
    every: timedelta = 15 * MINUTE,
    volume: str = "100",
) -> list[Reading]:
    """Readings of a cumulative register under a flow (m³/h) that is constant over each interval."""
    total, at, out = Decimal(volume), start, []
    while at <= end:
        out.append(reading(at, utility=Utility.WATER, water_volume_total=f"{total}"))
        total += flow(at) * Decimal(every.seconds) / 3600
        at += every
    return out


def household(at: datetime) -> Decimal:
    hour = at.astimezone(SHANGHAI).time()
    if time(6, 30) <= hour < time(7, 30):
        return Decimal("0.3")
    if time(12) <= hour < time(12, 30):
        return Decimal("0.1")
    if time(19) <= hour < time(22):
        return Decimal("0.15")
    return Decimal(0)


def test_ordinary_household_raises_nothing_for_a_week() -> None:
    _, outcome = run(LEAK, live(water(local(2024, 3, 4), local(2024, 3, 11), household)))
    assert outcome == []


def test_continuous_small_night_flow_raises_by_the_end_of_the_same_night() -> None:
    # A toilet leaking 20 L/h from 23:00; the household uses water as usual in the evening.
    def usage(at: datetime) -> Decimal:
        return household(at) + (Decimal("0.02") if at >= local(2024, 3, 4, 23) else 0)

    readings = water(local(2024, 3, 4, 18), local(2024, 3, 5, 9), usage)
    _, night = run(NIGHT_ONLY, live(readings))
    assert when(night) == [("raise", local(2024, 3, 5, 5))]
    assert isinstance(night[0][1], Raise)
    assert night[0][1].details["reason"] == "night_flow"
    _, either = run(LEAK, live(readings))
    assert edges(either) == [("raise", METER, WATER_LEAK)]
    assert either[0][0] <= local(2024, 3, 5, 5)


def test_a_night_with_one_quiet_interval_is_not_a_leak() -> None:
    def usage(at: datetime) -> Decimal:
        return Decimal(0) if local(2024, 3, 5, 3) <= at < local(2024, 3, 5, 3, 15) else Decimal("0.02")

    _, outcome = run(NIGHT_ONLY, live(water(local(2024, 3, 4, 20), local(2024, 3, 5, 8), usage)))
    assert outcome == []


def test_a_night_mostly_unseen_is_not_judged() -> None:
    readings = water(local(2024, 3, 4, 20), local(2024, 3, 5, 8), lambda _: Decimal("0.02"))
    # Readings between 02:15 and 05:00 lost: 15 minutes of a three-hour night were seen.
    kept = [r for r in readings if not local(2024, 3, 5, 2, 15) < r.sampled_at < local(2024, 3, 5, 5)]
    assert run(NIGHT_ONLY, live(kept))[1] == []
    assert when(run(NIGHT_ONLY, live(readings))[1]) == [("raise", local(2024, 3, 5, 5))]


def test_a_night_window_across_midnight() -> None:
    rule = replace(NIGHT_ONLY, night_start=time(23), night_end=time(4))
    _, outcome = run(rule, live(water(local(2024, 3, 4, 20), local(2024, 3, 5, 8), lambda _: Decimal("0.02"))))
    assert when(outcome) == [("raise", local(2024, 3, 5, 4))]


def test_a_flowing_gap_neither_raises_nor_resets_the_continuous_run() -> None:
    rule = replace(LEAK, continuous_for=6 * HOUR)
    readings = water(local(2024, 3, 4, 8), local(2024, 3, 4, 23), lambda _: Decimal("0.02"))
    # No readings from 12:00 to 15:00, while water kept running: 4 h seen before, so 2 h more are needed after.
    kept = [r for r in readings if not local(2024, 3, 4, 12) < r.sampled_at < local(2024, 3, 4, 15)]
    assert when(run(rule, live(kept))[1]) == [("raise", local(2024, 3, 4, 17))]
    assert when(run(rule, live(readings))[1]) == [("raise", local(2024, 3, 4, 14))]


def test_a_dry_gap_resets_and_clears_but_a_flowing_gap_does_not_clear() -> None:
    rule = replace(LEAK, continuous_for=2 * HOUR)
    flow = water(local(2024, 3, 4, 8), local(2024, 3, 4, 11), lambda _: Decimal("0.02"))
    last = flow[-1].registers[WATER_VOLUME]
    # Three silent hours in which the register rose: water ran, so the leak is not over.
    wet = [
        reading(local(2024, 3, 4, 14), utility=Utility.WATER, water_volume_total=f"{last + Decimal('0.06')}"),
        reading(local(2024, 3, 4, 14, 15), utility=Utility.WATER, water_volume_total=f"{last + Decimal('0.065')}"),
    ]
    # Three silent hours in which the register stood still: no water ran at all, the leak is over.
    dry = [reading(local(2024, 3, 4, 14), utility=Utility.WATER, water_volume_total=f"{last}")]
    assert edges(run(rule, live(flow + wet))[1]) == [("raise", METER, WATER_LEAK)]
    assert when(run(rule, live(flow + dry))[1]) == [("raise", local(2024, 3, 4, 10)), ("clear", local(2024, 3, 4, 14))]


def test_leak_clears_after_an_hour_without_flow_and_a_short_pause_does_not() -> None:
    rule = replace(LEAK, continuous_for=2 * HOUR)

    def usage(at: datetime) -> Decimal:
        pause = local(2024, 3, 4, 12) <= at < local(2024, 3, 4, 12, 45)
        fixed = at >= local(2024, 3, 4, 14)
        return Decimal(0) if pause or fixed else Decimal("0.03")

    _, outcome = run(rule, live(water(local(2024, 3, 4, 8), local(2024, 3, 4, 18), usage)))
    assert when(outcome) == [("raise", local(2024, 3, 4, 10)), ("clear", local(2024, 3, 4, 15))]


def test_a_register_going_backwards_is_a_new_meter_not_a_flow() -> None:
    before = water(local(2024, 3, 4, 8), local(2024, 3, 4, 9), lambda _: Decimal("0.02"), volume="812.5")
    after = water(local(2024, 3, 4, 9, 15), local(2024, 3, 4, 11), lambda _: Decimal(0), volume="0")
    state, outcome = run(replace(LEAK, continuous_for=2 * HOUR), live(before + after))
    assert outcome == []
    assert isinstance(state, WaterLeakState)
    assert state.flowing == timedelta(0)


def test_water_leak_ignores_late_and_electric_readings() -> None:
    readings = water(local(2024, 3, 4, 8), local(2024, 3, 4, 16), lambda _: Decimal("0.02"))
    hostile: list[Step] = []
    for r in readings:
        # Each reading, an electricity reading of the same meter id, and the first reading delivered again.
        hostile += [
            (r.sampled_at, r),
            (r.sampled_at, reading(r.sampled_at, voltage_a="230")),
            (r.sampled_at, readings[0]),
        ]
    rule = replace(LEAK, continuous_for=6 * HOUR)
    clean = run(rule, live(readings))[1]
    assert run(rule, hostile)[1] == clean
    assert when(clean) == [("raise", local(2024, 3, 4, 14))]


# --- gateways and meters offline -----------------------------------------------------------------------------

CONNECTIVITY = ConnectivityRule()
METERS = [f"m-{n:04d}" for n in range(1, 31)]


def ticks(start: datetime, end: datetime, every: timedelta = MINUTE) -> Iterator[Step]:
    at = start
    while at <= end:
        yield at, Tick()
        at += every


def outage(down: datetime, up: datetime, still_offline: Sequence[str] = (), meters_first: bool = False) -> list[Step]:
    """30 meters on one gateway: all online, the gateway goes down, comes back, meters report in."""
    steps: list[Step] = live([GatewayStatus(gateway_id=GATEWAY, online=True, at=T0)])
    steps += live([device(m, True, T0 + i * timedelta(seconds=2)) for i, m in enumerate(METERS)])
    # The collector notices each meter's timeout within a poll cycle; with `meters_first`, before the gateway.
    first = down - 3 * MINUTE if meters_first else down + 20 * timedelta(seconds=1)
    silent = live([device(m, False, first + i * timedelta(seconds=3)) for i, m in enumerate(METERS)])
    gone = live([GatewayStatus(gateway_id=GATEWAY, online=False, at=down)])
    steps += silent + gone if meters_first else gone + silent
    steps += list(ticks(down, up - MINUTE))
    steps += live([GatewayStatus(gateway_id=GATEWAY, online=True, at=up)])
    back = [m for m in METERS if m not in still_offline]
    steps += live(
        [device(m, True, up + 30 * timedelta(seconds=1) + i * timedelta(seconds=3)) for i, m in enumerate(back)]
    )
    steps += list(ticks(up + 3 * MINUTE, up + 2 * HOUR))
    return sorted(steps, key=lambda s: s[0])


def test_gateway_with_30_meters_going_offline_is_one_alarm_and_one_clear() -> None:
    down, up = T0 + HOUR, T0 + 4 * HOUR
    _, outcome = run(CONNECTIVITY, outage(down, up))
    assert edges(outcome) == [("raise", GATEWAY, GATEWAY_OFFLINE), ("clear", GATEWAY, GATEWAY_OFFLINE)]
    assert when(outcome) == [("raise", down + 5 * MINUTE), ("clear", up + 3 * MINUTE)]
    raised = outcome[0][1]
    assert isinstance(raised, Raise)
    assert raised.details["meters"] == "30"


def test_meters_going_silent_before_the_gateway_is_declared_down_still_give_one_alarm() -> None:
    _, outcome = run(CONNECTIVITY, outage(T0 + HOUR, T0 + 4 * HOUR, meters_first=True))
    assert edges(outcome) == [("raise", GATEWAY, GATEWAY_OFFLINE), ("clear", GATEWAY, GATEWAY_OFFLINE)]


def test_meters_still_offline_after_the_gateway_returns_alarm_once_it_has_settled() -> None:
    up = T0 + 4 * HOUR
    _, outcome = run(CONNECTIVITY, outage(T0 + HOUR, up, still_offline=["m-0007", "m-0021"]))
    assert edges(outcome) == [
        ("raise", GATEWAY, GATEWAY_OFFLINE),
        ("clear", GATEWAY, GATEWAY_OFFLINE),
        ("raise", "m-0007", METER_OFFLINE),
        ("raise", "m-0021", METER_OFFLINE),
    ]
    assert [at for _, at in when(outcome)][2:] == [up + 10 * MINUTE] * 2


def test_a_meter_alarm_open_before_the_outage_stays_open_without_duplicates() -> None:
    steps = live([GatewayStatus(gateway_id=GATEWAY, online=True, at=T0), device("m-0003", True, T0)])
    steps += live([device("m-0003", False, T0 + MINUTE)])
    steps += list(ticks(T0 + MINUTE, T0 + 30 * MINUTE))
    steps += live([GatewayStatus(gateway_id=GATEWAY, online=False, at=T0 + 31 * MINUTE)])
    steps += list(ticks(T0 + 31 * MINUTE, T0 + 2 * HOUR))
    steps += live([GatewayStatus(gateway_id=GATEWAY, online=True, at=T0 + 2 * HOUR + MINUTE)])
    steps += list(ticks(T0 + 2 * HOUR + MINUTE, T0 + 3 * HOUR))
    steps += live([device("m-0003", True, T0 + 3 * HOUR + MINUTE)])
    steps += list(ticks(T0 + 3 * HOUR + MINUTE, T0 + 4 * HOUR))
    _, outcome = run(CONNECTIVITY, steps)
    assert edges(outcome) == [
        ("raise", "m-0003", METER_OFFLINE),
        ("raise", GATEWAY, GATEWAY_OFFLINE),
        ("clear", GATEWAY, GATEWAY_OFFLINE),
        ("clear", "m-0003", METER_OFFLINE),
    ]


@pytest.mark.parametrize(
    ("down_for", "up_for", "expected"),
    [
        (timedelta(minutes=1), timedelta(minutes=1), []),  # never down long enough
        (timedelta(minutes=6), timedelta(minutes=1), ["raise"]),  # never back long enough to clear
        (timedelta(minutes=6), timedelta(minutes=3), ["raise", "clear"] * 8),  # each a real outage and recovery
    ],
)
def test_a_flapping_gateway(down_for: timedelta, up_for: timedelta, expected: list[str]) -> None:
    steps: list[Step] = []
    at = T0
    for _ in range(8):
        steps += live([GatewayStatus(gateway_id=GATEWAY, online=False, at=at)])
        steps += list(ticks(at, at + down_for - MINUTE))
        at += down_for
        steps += live([GatewayStatus(gateway_id=GATEWAY, online=True, at=at)])
        steps += list(ticks(at, at + up_for - MINUTE))
        at += up_for
    assert [edge for edge, _ in when(run(CONNECTIVITY, steps)[1])] == expected


def test_stale_device_states_and_other_gateways_are_ignored() -> None:
    steps = live([GatewayStatus(gateway_id=GATEWAY, online=True, at=T0), device("m-0001", False, T0 + MINUTE)])
    # Reordered delivery: an older "online" after the newer "offline"; a state from another gateway.
    steps += [(T0 + 2 * MINUTE, device("m-0001", True, T0 + 30 * timedelta(seconds=1)))]
    steps += [(T0 + 2 * MINUTE, device("m-0099", False, T0 + MINUTE, gateway="gw-02"))]
    steps += list(ticks(T0 + 2 * MINUTE, T0 + HOUR))
    state, outcome = run(CONNECTIVITY, steps)
    assert when(outcome) == [("raise", T0 + 16 * MINUTE)]
    assert isinstance(state, ConnectivityState)
    assert set(state.meters) == {"m-0001"}


# --- communication errors ------------------------------------------------------------------------------------

COMM = CommErrorRule()


def polls(start: datetime, pattern: str, meter: str = METER, gateway_down: bool = False) -> list[PollWindow]:
    """One poll a minute, counted per five-minute window: '.' answered, 'x' failed."""
    return [
        PollWindow(
            meter_id=meter,
            start=start + i * MINUTE,
            end=start + (i + len(chunk)) * MINUTE,
            attempts=len(chunk),
            failures=chunk.count("x"),
            gateway_down=gateway_down,
        )
        for i in range(0, len(pattern), 5)
        if (chunk := pattern[i : i + 5])
    ]


def window(minutes: tuple[int, int], attempts: int, failures: int) -> PollWindow:
    return PollWindow(
        meter_id=METER,
        start=T0 + minutes[0] * MINUTE,
        end=T0 + minutes[1] * MINUTE,
        attempts=attempts,
        failures=failures,
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("." * 120, []),
        ("....x" * 24, []),  # 20 %: not above the limit
        ("...xx" * 12, ["raise"]),
        ("...xx" * 12 + "." * 120, ["raise", "clear"]),
        ("...xx" * 12 + "....x" * 24, ["raise"]),  # between the rates: neither
        ("x" * 180, []),  # a dead meter is the offline rule's alarm
        ("xx", []),  # too few polls to judge
    ],
)
def test_communication_error_rate(pattern: str, expected: list[str]) -> None:
    _, outcome = run(COMM, live(polls(T0, pattern)))
    assert [edge for edge, _ in when(outcome)] == expected


def test_the_same_window_twice_or_an_overlapping_one_is_not_counted_again() -> None:
    # 3 of 10 failed: 30 %. Delivered again, and re-cut overlapping, it would look like 6 of 20 and 9 of 30.
    base = [window((0, 5), 5, 1), window((5, 10), 5, 2)]
    replayed = [*base, window((5, 10), 5, 2), window((3, 8), 5, 5), window((0, 5), 5, 1)]
    state, outcome = run(COMM, live(replayed))
    assert isinstance(state, CommErrorState)
    assert [(c.attempts, c.failures) for c in state.counts] == [(5, 1), (5, 2)]
    assert outcome[0][1] == Raise(
        METER,
        COMM_ERRORS,
        AlarmSeverity.WARNING,
        "通信不稳定：近 60 分钟抄读失败率 30.0%（3/10）",
        "Unreliable communication: 30.0% of polls failed in the last 60 min (3/10)",
        {"failures": "3", "attempts": "10", "rate": "30.0", "at": (T0 + 10 * MINUTE).isoformat()},
    )
    assert len(outcome) == 1


def test_windows_out_of_order_count_once_and_windows_older_than_the_sliding_window_not_at_all() -> None:
    now = T0 + 2 * HOUR
    late = [window((15, 20), 5, 0), window((5, 10), 5, 0), window((10, 15), 5, 0), window((0, 5), 5, 5)]
    state, _ = run(COMM, [(now, w) for w in late])
    assert isinstance(state, CommErrorState)
    assert [c.start for c in state.counts] == [T0 + m * MINUTE for m in (0, 5, 10, 15)]
    # A window that ended an hour before the newest one is outside the sliding window: dropped, not counted.
    state, _ = run(COMM, [(now, window((70, 75), 5, 0)), (now, window((0, 5), 5, 5))])
    assert isinstance(state, CommErrorState)
    assert [c.start for c in state.counts] == [T0 + 70 * MINUTE]


def test_poll_windows_are_checked_and_the_shared_model_refuses_more_failures_than_attempts() -> None:
    with pytest.raises(ValueError, match="between"):
        window((0, 5), 3, 4)
    with pytest.raises(ValueError, match="after"):
        window((5, 5), 3, 1)
    with pytest.raises(ValidationError, match="failures cannot exceed attempts"):
        PollCounts(meter_id=METER, attempts=3, failures=4)


def test_polls_failing_because_the_gateway_is_down_do_not_count() -> None:
    steps = live(
        polls(T0, "." * 30) + polls(T0 + 30 * MINUTE, "x" * 60, gateway_down=True) + polls(T0 + 90 * MINUTE, "." * 30)
    )
    assert run(COMM, steps)[1] == []


# --- relay / valve against the shadow ------------------------------------------------------------------------

SUPPLY = SupplyMismatchRule()


def desired(on: bool, at: datetime) -> SupplyDesired:
    return SupplyDesired(meter_id=METER, supply_on=on, at=at)


def test_relay_not_following_the_shadow_alarms_after_the_grace_and_clears_when_it_does() -> None:
    steps = live([desired(True, T0), reading(T0, relay=RelayState.CLOSED), desired(False, T0 + HOUR)])
    steps += live([reading(T0 + HOUR + i * 5 * MINUTE, relay=RelayState.CLOSED) for i in range(1, 3)])
    steps += list(ticks(T0 + HOUR, T0 + 2 * HOUR))
    steps += live([device(METER, True, T0 + 2 * HOUR + MINUTE, relay=RelayState.OPEN)])
    steps = sorted(steps, key=lambda s: s[0])
    _, outcome = run(SUPPLY, steps)
    assert when(outcome) == [("raise", T0 + HOUR + 10 * MINUTE), ("clear", T0 + 2 * HOUR + MINUTE)]


def supply_run(observations: list[Observation], late: Sequence[Step] = ()) -> Outcome:
    steps = sorted(live(observations) + list(ticks(T0, T0 + HOUR)), key=lambda s: s[0])
    return run(SUPPLY, [*steps, *late, *ticks(T0 + HOUR, T0 + 2 * HOUR)])[1]


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        pytest.param(
            [
                desired(False, T0),
                reading(T0 + MINUTE, relay=RelayState.CLOSED),
                reading(T0 + 9 * MINUTE, relay=RelayState.OPEN),
            ],
            [],
            id="confirmed within the grace",
        ),
        pytest.param(
            [
                reading(T0, relay=RelayState.CLOSED),
                desired(False, T0 + MINUTE),
                desired(True, T0 + 8 * MINUTE),
                desired(False, T0 + 9 * MINUTE),
            ],
            [("raise", T0 + 19 * MINUTE)],
            id="a new target restarts the grace",
        ),
        pytest.param(
            [reading(T0, relay=RelayState.CLOSED), desired(False, T0 + MINUTE), desired(False, T0 + 8 * MINUTE)],
            [("raise", T0 + 11 * MINUTE)],
            id="a repeated target does not restart it",
        ),
        pytest.param(
            [
                desired(True, T0),
                reading(T0, utility=Utility.WATER, valve=ValveState.MOVING),
                reading(T0 + MINUTE, relay=RelayState.UNKNOWN),
            ],
            [],
            id="moving and unknown states are no answer",
        ),
        pytest.param(
            [desired(True, T0), reading(T0 + MINUTE, utility=Utility.WATER, valve=ValveState.CLOSED)],
            [("raise", T0 + 11 * MINUTE)],
            id="valve closed while it should be open",
        ),
    ],
)
def test_supply_mismatch_cases(observations: list[Observation], expected: list[tuple[str, datetime]]) -> None:
    assert when(supply_run(observations)) == expected


def test_an_older_supply_report_arriving_late_changes_nothing() -> None:
    late = [(T0 + HOUR, reading(T0 + 30 * timedelta(seconds=1), relay=RelayState.CLOSED))]
    assert supply_run([desired(False, T0), reading(T0 + MINUTE, relay=RelayState.OPEN)], late) == []


# --- business rules ------------------------------------------------------------------------------------------

VACANT = VacantUsageRule()


def lease(leased: bool, at: datetime) -> LeaseStatus:
    return LeaseStatus(meter_id=METER, leased=leased, at=at)


def test_consumption_without_a_lease_alarms_after_the_move_out_grace_and_a_new_lease_clears() -> None:
    move_out = local(2024, 3, 4, 10)
    observations: list[Observation] = [lease(True, local(2023, 9, 1)), lease(False, move_out)]
    observations += hours(MONDAY, 4, lambda h: Decimal("0.4") if h >= move_out + HOUR else Decimal(0))
    steps = sorted(live(observations) + live([lease(True, local(2024, 3, 7, 12, 30))]), key=lambda s: s[0])
    _, outcome = run(VACANT, steps)
    assert when(outcome) == [("raise", move_out + 25 * HOUR), ("clear", local(2024, 3, 7, 12, 30))]


def test_vacant_usage_clears_after_a_quiet_day_and_ignores_hours_of_unknown_status() -> None:
    move_out = local(2024, 3, 1)
    used = local(2024, 3, 4, 20)
    steps = live([lease(False, move_out)])
    # Hours before the only lease change known here say nothing.
    steps += live(hours(date(2024, 2, 28), 1, lambda _: Decimal(5)))
    steps += live(hours(MONDAY, 3, lambda h: Decimal(2) if h == used else Decimal("0.05")))
    _, outcome = run(VACANT, steps)
    assert when(outcome) == [("raise", used + HOUR), ("clear", used + 25 * HOUR)]


def room(room_id: str | None, leased: bool | None, at: datetime, since: datetime | None = None) -> LeaseStatus:
    return LeaseStatus(meter_id=METER, room_id=room_id, leased=leased, since=since, at=at)


def test_a_meter_unbound_from_a_vacant_room_stops_counting_and_a_re_bound_one_follows_its_new_room() -> None:
    vacant_since = local(2024, 2, 1)
    used = local(2024, 3, 4, 20)
    unbound_at, bound_at = local(2024, 3, 4, 22, 30), local(2024, 3, 6, 9)
    steps = live([room("A", False, local(2024, 3, 1), since=vacant_since)])
    steps += live(hours(MONDAY, 1, lambda h: Decimal(2) if h == used else Decimal(0)))
    steps += live([room(None, None, unbound_at)])  # taken out of room A: what it measures is no room's now
    steps += live(hours(date(2024, 3, 5), 1, lambda _: Decimal(3)))
    # Bound to room B, vacant for a month. B's newest occupancy is older than the one that unbound the meter from
    # A: a move between rooms is the service's verdict over every room's newest occupancy, not ordered by time.
    steps += [(bound_at, room("B", False, local(2024, 3, 4, 12), since=vacant_since))]
    steps += [(bound_at, room("B", False, local(2024, 3, 4, 11), since=vacant_since))]  # stale within B: ignored
    steps += live(hours(date(2024, 3, 6), 1, lambda h: Decimal(4) if h == local(2024, 3, 6, 10) else Decimal(0)))
    state, outcome = run(VACANT, steps)
    assert when(outcome) == [("raise", used + HOUR), ("clear", unbound_at), ("raise", local(2024, 3, 6, 11))]
    assert isinstance(state, VacantUsageState)
    assert (state.room_id, state.leased, state.lease_since) == ("B", False, vacant_since)
    last = outcome[-1][1]
    assert isinstance(last, Raise)
    assert last.details["room_id"] == "B"


def test_a_bound_meter_must_have_a_lease_status() -> None:
    with pytest.raises(ValueError, match="lease status"):
        room("A", None, T0)


BALANCE = BalanceMismatchRule()


def server(balance: str, at: datetime) -> ServerBalance:
    return ServerBalance(meter_id=METER, balance=Decimal(balance), at=at)


def test_meter_balance_not_following_a_top_up_alarms_after_the_grace() -> None:
    steps = live([server("50.00", T0)])
    steps += live([reading(T0 + i * 15 * MINUTE, balance_money="49.80") for i in range(1, 13)])
    steps += live([server("150.00", T0 + 10 * MINUTE)])  # top-up; the meter never hears of it
    steps += live([reading(T0 + 3 * HOUR + 15 * MINUTE, balance_money="149.70")])
    _, outcome = run(BALANCE, sorted(steps, key=lambda s: s[0]))
    assert when(outcome) == [("raise", T0 + 2 * HOUR + 15 * MINUTE), ("clear", T0 + 3 * HOUR + 15 * MINUTE)]


@pytest.mark.parametrize(
    ("case", "meter_values", "server_value", "expected"),
    [
        ("within tolerance", ["49.10"] * 12, "50.00", []),
        ("billing lag shorter than the grace", ["45.00"] * 6 + ["49.50"] * 6, "50.00", []),
        ("flapping across the tolerance never stays long enough", ["48.00", "49.50"] * 12, "50.00", []),
        ("an overdrawn account against a meter at zero", ["0.00"] * 16, "-12.40", []),
        ("a sustained difference", ["40.00"] * 16, "50.00", ["raise"]),
    ],
)
def test_balance_mismatch_cases(case: str, meter_values: list[str], server_value: str, expected: list[str]) -> None:
    steps = live([server(server_value, T0)])
    steps += live([reading(T0 + (i + 1) * 15 * MINUTE, balance_money=value) for i, value in enumerate(meter_values)])
    assert [edge for edge, _ in when(run(BALANCE, steps)[1])] == expected


def test_server_balances_fan_out_to_every_meter_of_the_account() -> None:
    event = BalanceEvent(
        source="billing-test",
        occurred_at=T0,
        account_id="acc-1",
        kind=BalanceEventKind.CHANGED,
        level=BalanceLevel.OK,
        balance=Decimal("88.00"),
        sequence=3,
        meters=(MeterRef(meter_id="m-e", utility=Utility.ELECTRICITY), MeterRef(meter_id="m-w", utility=Utility.WATER)),
    )
    assert server_balances(event) == [
        ServerBalance(meter_id=meter, balance=Decimal("88.00"), at=T0) for meter in ("m-e", "m-w")
    ]


# --- restarts: persisting the state between any two steps changes nothing ------------------------------------


def _scenarios() -> dict[str, tuple[Rule, list[Step]]]:
    leak = water(local(2024, 3, 4, 18), local(2024, 3, 5, 9), lambda _: Decimal("0.02"))
    base = ordinary()
    spike_at = local(2024, 3, 26, 14)
    return {
        "threshold": (VOLTAGE, per_minute(v("240", 6) + (v("234") + v("236")) * 5 + v("230", 6))),
        "flag": (TAMPER, per_minute(regs(1, ReadingFlag.TAMPER) + regs(61))),
        "spike": (SPIKE, live(hours(MONDAY, 28, lambda h: Decimal(7) if h == spike_at else base(h)))),
        "night leak": (NIGHT_ONLY, live(leak)),
        "continuous leak": (replace(LEAK, continuous_for=2 * HOUR), live(leak)),
        "gateway outage": (CONNECTIVITY, outage(T0 + HOUR, T0 + 3 * HOUR, still_offline=["m-0009"])),
        "comm errors": (COMM, live(polls(T0, "...xx" * 12 + "." * 60))),
        "supply": (SUPPLY, [*live([desired(False, T0), reading(T0, relay=RelayState.CLOSED)]), *ticks(T0, T0 + HOUR)]),
        "vacant": (VACANT, live([lease(False, local(2024, 3, 1)), *hours(MONDAY, 1, lambda _: Decimal(1))])),
        "balance": (
            BALANCE,
            live([server("90.00", T0), *[reading(T0 + i * 20 * MINUTE, balance_money="70.00") for i in range(10)]]),
        ),
    }


@pytest.mark.parametrize("name", list(_scenarios()))
def test_restart_anywhere_gives_the_same_alarms(name: str) -> None:
    rule, steps = _scenarios()[name]
    state, outcome = run(rule, steps)
    restarted_state, restarted = run(rule, steps, restart=True)
    assert outcome, "the scenario must raise something to be a test"
    assert restarted == outcome
    assert state is not None
    assert restarted_state is not None
    assert stored(restarted_state) == stored(state)


@pytest.mark.parametrize("name", list(_scenarios()))
def test_state_json_round_trips_with_decimal_strings(name: str) -> None:
    rule, steps = _scenarios()[name]
    state, _ = run(rule, steps)
    assert state is not None
    assert reloaded(state) == state
    json.loads(stored(state), parse_float=lambda raw: pytest.fail(f"a float in persisted state: {raw}"))


def test_a_sources_stored_states_read_back_equal_as_they_change() -> None:
    # The service's row: every slot at once, encoded small and partly reused from the previous write.
    encoder = StateEncoder()
    rules = [(s.rule.slot, s.rule) for s in default_rules() if source_of(s.rule, reading(T0)) is not None]
    held: dict[str, RuleState] = {
        name: state for name, (rule, steps) in _scenarios().items() if (state := run(rule, steps)[0])
    }
    hourly: HourlyState | None = None
    samples = v("240", 8) + regs(3, ReadingFlag.TAMPER, voltage_a="230") + regs(70, voltage_a="231")
    for i, (now, observation) in enumerate(per_minute(samples)):
        assert isinstance(observation, Reading)
        counter = reading(now, balance_money="5.20", energy_active_import_total=f"{100 + i}")
        for slot, rule in rules:
            for fed in (observation, counter):
                held[slot], _ = evaluate(rule, held.get(slot), fed, now)
        hourly, _ = accumulate(hourly, counter)
        states = {**held, SLOT: hourly}
        raw = encoder.encode(METER, states)
        assert decode_states(raw) == states
    json.loads(raw, parse_float=lambda raw: pytest.fail(f"a float in persisted state: {raw}"))
    assert held[Measure.OVER_VOLTAGE.value] != DebounceState(), "the stretch must have moved the states"
    # Every rule the last reading left settled holds one state object: written once, referenced by the others.
    settled = [slot for slot, state in states.items() if state is held[Measure.UNDER_VOLTAGE.value]]
    assert len(settled) >= 5
    assert raw.startswith('{"$refs":1,')
    assert raw.count('"kind":"debounce"') < len(settled)
    # A row written slot by slot (as before shared states, or by hand) reads back the same.
    plain = json.dumps(
        {slot: json.loads(StateEncoder().encode(slot, {slot: state}))[slot] for slot, state in states.items()}
    )
    assert '"$refs"' not in plain
    assert decode_states(plain) == states
    for broken in ('{"$refs":1,"tamper":{"kind":"debounce"},"battery_low":7}', '{"$refs":1,"tamper":0}'):
        with pytest.raises(ValidationError):
            decode_states(broken)


def test_every_default_rule_round_trips_as_json() -> None:
    for scoped in default_rules():
        assert rule_from_json(rule_to_json(scoped.rule)) == scoped.rule


# --- scopes --------------------------------------------------------------------------------------------------


def scoped(level: ScopeLevel, key: str, limit: str, enabled: bool = True) -> ScopedRule:
    rule = ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal(limit))
    return ScopedRule(scope=RuleScope(level=level, key=key), rule=rule, enabled=enabled)


LEVEL = ScopeLevel
CONFIGURED = [
    scoped(LEVEL.DEFAULT, "", "60"),
    scoped(LEVEL.ESTATE, "e1", "50"),
    scoped(LEVEL.BUILDING, "b1", "45"),
    scoped(LEVEL.MODEL, "DDSY-80A", "80"),
    scoped(LEVEL.METER, "m-special", "32"),
    scoped(LEVEL.METER, "m-off", "1", enabled=False),
]


@pytest.mark.parametrize(
    ("target", "limit"),
    [
        (ScopeTarget(estate_id="e9"), "60"),
        (ScopeTarget(estate_id="e1"), "50"),
        (ScopeTarget(estate_id="e1", building_id="b1"), "45"),
        (ScopeTarget(estate_id="e1", building_id="b1", model="DDSY-80A"), "80"),
        (ScopeTarget(estate_id="e1", building_id="b1", model="DDSY-80A", meter_id="m-special"), "32"),
        (ScopeTarget(estate_id="e1", building_id="b2", meter_id="m-other"), "50"),
        (ScopeTarget(estate_id="e1", building_id="b1", meter_id="m-off"), None),
    ],
)
def test_most_specific_scope_wins(target: ScopeTarget, limit: str | None) -> None:
    for order in (CONFIGURED, CONFIGURED[::-1]):
        found = resolve_rules(order, target).get(Measure.OVER_CURRENT.value)
        assert found is None or isinstance(found, ThresholdRule)
        assert (found and found.limit) == (limit and Decimal(limit))


def test_resolution_is_per_slot_and_conflicts_are_refused() -> None:
    everything = resolve_rules(default_rules(), ScopeTarget(estate_id="e1", meter_id="m1"))
    assert len(everything) == len(default_rules())
    assert {connectivity.CONNECTIVITY, WATER_LEAK, "tamper", "over_voltage"} <= set(everything)
    with pytest.raises(ValueError, match="same scope"):
        resolve_rules([scoped(LEVEL.ESTATE, "e1", "50"), scoped(LEVEL.ESTATE, "e1", "55")], ScopeTarget(estate_id="e1"))
    with pytest.raises(ValueError, match="key"):
        RuleScope(level=LEVEL.BUILDING)


# --- the evaluation contract ---------------------------------------------------------------------------------


def test_evaluate_refuses_naive_now_and_foreign_state() -> None:
    with pytest.raises(ValueError, match="aware"):
        evaluate(VOLTAGE, None, Tick(), datetime(2024, 3, 4, 9))  # noqa: DTZ001 - the point of the test
    with pytest.raises(TypeError):
        evaluate(VOLTAGE, SpikeState(), reading(T0, voltage_a="230"), T0)
    with pytest.raises(ValueError, match="aware"):
        LeaseStatus(meter_id=METER, leased=True, at=datetime(2024, 3, 4))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("rule", "observation", "source"),
    [
        (CONNECTIVITY, device("m-0001", False, T0), GATEWAY),
        (CONNECTIVITY, reading(T0, voltage_a="230"), None),
        (VOLTAGE, reading(T0, voltage_a="230"), METER),
        (VOLTAGE, Tick(), None),
        (SPIKE, HourlyConsumption(meter_id=METER, hour_start=T0, quantity=Decimal(1)), METER),
        (COMM, window((0, 5), 5, 0), METER),
        (SUPPLY, desired(True, T0), METER),
        (VACANT, lease(True, T0), METER),
        (BALANCE, server("1.00", T0), METER),
        (BALANCE, GatewayStatus(gateway_id=GATEWAY, online=True, at=T0), None),
    ],
)
def test_source_of(rule: Rule, observation: Observation, source: str | None) -> None:
    assert source_of(rule, observation) == source


def test_only_rules_on_retained_states_need_ticks() -> None:
    assert [r.rule.slot for r in default_rules() if needs_ticks(r.rule)] == [connectivity.CONNECTIVITY, SUPPLY_MISMATCH]


def test_equal_rules_still_word_their_alarms_their_own_way() -> None:
    # Evaluation is worked out once per rule object; two rules equal as values must not share their wording.
    plain = ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal("60"), raise_after=timedelta(0))
    precise = ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal("60.0"), raise_after=timedelta(0))
    assert plain == precise
    shown = []
    for rule in (plain, precise, plain):
        ((_, raised),) = run(rule, per_minute(regs(1, current_a="70")))[1]
        assert isinstance(raised, Raise)
        shown.append(raised.details["limit"])
    assert shown == ["60", "60.0", "60"]


def test_decisions_are_the_lead_rules_types() -> None:
    _, outcome = run(LEAKAGE, per_minute(regs(1, residual_current="45") + regs(6, residual_current="0")))
    assert [type(x) for _, x in outcome] == [Raise, Clear]


# --- skipping: rules a reading cannot move are not evaluated at all ------------------------------------------

PARTIAL = ReadingFlag.PARTIAL


@pytest.mark.parametrize(
    ("rule", "registers", "flags", "skipped"),
    [
        (VOLTAGE, {"energy_active_import_total", "balance_money"}, set(), True),
        (VOLTAGE, {"voltage_b"}, set(), False),
        (REVERSE, set(), set(), False),  # a meter that can flag reverse power and did not: a healthy answer
        (DRIFT, {"energy_active_import_total"}, set(), False),
        (LEAKAGE, {"voltage_a"}, set(), False),  # a meter that can flag leakage and did not: a healthy answer
        (TAMPER, set(), set(), False),
        (TAMPER, set(), {PARTIAL}, True),
        (TAMPER, set(), {ReadingFlag.TAMPER, PARTIAL}, False),
        (LEAK, {"energy_active_import_total"}, set(), True),
        (LEAK, {"water_volume_total"}, set(), False),
        (BALANCE, {"voltage_a"}, set(), True),
        (BALANCE, {"balance_money"}, set(), False),
        (SUPPLY, set(), set(), False),  # any reading also lets a relay mismatch mature
        (SPIKE, set(), set(), False),  # not fed by readings at all: never claimed
    ],
)
def test_which_rules_a_reading_skips(rule: Rule, registers: set[str], flags: set[ReadingFlag], skipped: bool) -> None:
    assert skips(rule, registers, flags) is skipped


READING_RULES = [s.rule for s in default_rules() if source_of(s.rule, reading(T0)) is not None]
REGISTER_NAMES = sorted(
    {*VOLTAGES, *CURRENTS, POWER_ACTIVE, thresholds.POWER_FACTOR, WATER_VOLUME, METER_BALANCE}
    | {RESIDUAL_CURRENT, CLOCK_OFFSET, "energy_active_import_total"}
)
HOSTILE_READINGS = st.lists(
    st.tuples(
        st.integers(-10, 90),  # minutes from T0: out of order, duplicated, with gaps
        st.dictionaries(
            st.sampled_from(REGISTER_NAMES), st.decimals(min_value=-500, max_value=500, places=3), max_size=4
        ),
        st.sets(st.sampled_from(list(ReadingFlag)), max_size=2),
        st.sampled_from([None, *RelayState]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=HOSTILE_READINGS)
def test_a_skipped_rule_could_not_have_moved(
    steps: list[tuple[int, dict[str, Decimal], set[ReadingFlag], RelayState | None]],
) -> None:
    now = T0 + 100 * MINUTE
    for rule in READING_RULES:
        state: RuleState | None = None
        for minute, registers, flags, relay in steps:
            observation = Reading.create(
                METER,
                Utility.ELECTRICITY,
                T0 + minute * MINUTE,
                registers=registers,
                flags=frozenset(flags),
                relay=relay,
            )
            new, made = evaluate(rule, state, observation, now)
            if skips(rule, observation.registers, observation.flags):
                assert made == []
                assert new == (state if state is not None else type(new)())
            state = new
