"""Water leak: the night's minimum flow above a limit, or water that never stops (continuous flow)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import ClassVar, Final, Literal
from zoneinfo import ZoneInfo

from shuidian_alarm.domain.baselines import DEFAULT_TIMEZONE
from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.observations import Feeds
from shuidian_alarm.domain.times import HOUR, ZERO, fresh, iso, seconds
from shuidian_shared.messages import AlarmSeverity, Reading

WATER_VOLUME: Final = "water_volume_total"  # m³, cumulative
WATER_LEAK: Final = "water_leak"


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
    feeds: ClassVar[Feeds] = (Reading,)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes


@dataclass(frozen=True, kw_only=True)
class WaterLeakState:
    """The last volume reading, the running flow and dry spells, and the night being measured."""

    kind: Literal["water_leak"] = "water_leak"
    active: bool = False
    last_at: datetime | None = None
    last_volume: Decimal | None = None
    flowing: timedelta = ZERO
    dry: timedelta = ZERO
    night_start: datetime | None = None
    night_end: datetime | None = None
    night_min: Decimal | None = None
    night_covered: timedelta = ZERO


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
    covered = seconds(state.night_covered) >= rule.night_coverage * seconds(state.night_end - state.night_start)
    leaking = covered and state.night_min is not None and state.night_min > rule.night_flow_limit
    closed = replace(state, night_start=None, night_end=None, night_min=None, night_covered=ZERO)
    return closed, (state.night_min if leaking else None)


def on_water_reading(
    rule: WaterLeakRule, state: WaterLeakState, reading: Reading, now: datetime
) -> tuple[WaterLeakState, list[Decision]]:
    volume = reading.registers.get(WATER_VOLUME)
    at = reading.sampled_at
    if volume is None or not fresh(state.last_at, at, now):
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
        flow = delta / (seconds(span) / 3600)
    else:
        new = replace(new, dry=ZERO)
    night_leaks: list[Decimal] = []
    if flow is not None:
        if flow > rule.min_flow:
            new = replace(new, flowing=new.flowing + span, dry=ZERO)
        else:
            new = replace(new, flowing=ZERO, dry=new.dry + span)
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
            hours = f"{(seconds(new.flowing) / 3600).quantize(Decimal('0.1'))}"
            zh, en = (
                f"疑似漏水：已连续用水 {hours} 小时",
                f"Suspected water leak: water has run for {hours} h without a break",
            )
            details = {"reason": "continuous_flow", "hours": hours}
        details["at"] = iso(at)
        return replace(new, active=True), [Raise(meter, WATER_LEAK, rule.severity, zh, en, details)]
    if new.active and new.dry >= rule.clear_after:
        return replace(new, active=False), [Clear(meter, WATER_LEAK)]
    return new, []
