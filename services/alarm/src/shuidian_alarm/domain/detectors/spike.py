"""Usage spike: an hour's consumption far above the meter's own baseline for that local hour and day type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.baselines import Bucket, Calendar, bucket_key, spike_limit, update_bucket
from shuidian_alarm.domain.decisions import Decision, Raise
from shuidian_alarm.domain.detectors.debounce import DebounceState, Evidence, debounce, edge
from shuidian_alarm.domain.observations import Feeds, HourlyConsumption
from shuidian_alarm.domain.times import HOUR, ZERO, fresh, iso
from shuidian_shared.messages import AlarmSeverity

USAGE_SPIKE: Final = "usage_spike"


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
    feeds: ClassVar[Feeds] = (HourlyConsumption,)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes


@dataclass(frozen=True, kw_only=True)
class SpikeState:
    """The meter's baseline buckets, the spike alarm, and the newest hour taken in."""

    kind: Literal["spike"] = "spike"
    baseline: Mapping[str, Bucket] = field(default_factory=dict)
    alarm: DebounceState = DebounceState()  # noqa: RUF009 (frozen: one shared default)
    last_hour: datetime | None = None


def on_hourly_spike(
    rule: SpikeRule, state: SpikeState, usage: HourlyConsumption, now: datetime
) -> tuple[SpikeState, list[Decision]]:
    # Only an hour that has ended (give or take the tolerance) can be judged.
    if not fresh(state.last_hour, usage.hour_start, now - HOUR):
        return state, []
    key = bucket_key(rule.calendar, usage.hour_start)
    bucket = state.baseline.get(key)
    evidence, sample, limit = Evidence.NONE, usage.quantity, None
    if bucket is not None and bucket.samples >= rule.warmup_samples:
        limit = spike_limit(bucket, rule.ratio, rule.floor, rule.deviations)
        evidence = Evidence.TRIGGER if usage.quantity > limit else Evidence.RELEASE
        # A spike enters the baseline only up to the limit, so one burst does not teach the meter to expect bursts.
        sample = min(usage.quantity, limit)
    end = usage.hour_start + HOUR
    alarm = debounce(state.alarm, end, evidence, ZERO, rule.clear_after, HOUR, start=usage.hour_start)
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
                "hour_start": iso(usage.hour_start),
            },
        )

    return new, edge(state.alarm.active, alarm.active, raised, usage.meter_id, USAGE_SPIKE)


def _iso_local(calendar: Calendar, at: datetime) -> str:
    return calendar.local(at).strftime("%Y-%m-%d %H:%M")
