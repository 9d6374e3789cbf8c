"""Vacant usage: consumption in a room without an active lease (after a move-out grace)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.detectors.debounce import DebounceState, Evidence, debounce, edge
from shuidian_alarm.domain.observations import Feeds, HourlyConsumption, LeaseStatus, Observation
from shuidian_alarm.domain.times import FUTURE_TOLERANCE, HOUR, ZERO, fresh, iso
from shuidian_shared.messages import AlarmSeverity

VACANT_USAGE: Final = "vacant_usage"


@dataclass(frozen=True, kw_only=True)
class VacantUsageRule:
    """Consumption above `tolerance` in an hour of a room without an active lease."""

    kind: Literal["vacant_usage"] = "vacant_usage"
    tolerance: Decimal = Decimal("0.1")
    move_out_grace: timedelta = timedelta(hours=24)  # move-out inspection and cleaning use some power and water
    clear_after: timedelta = timedelta(hours=24)  # quiet hours before the alarm clears while still vacant
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = VACANT_USAGE  # the alarm type it raises; a more specific scope overrides it
    feeds: ClassVar[Feeds] = (LeaseStatus, HourlyConsumption)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes


@dataclass(frozen=True, kw_only=True)
class VacantUsageState:
    """The room the meter supplies, its lease status and since when, the newest hour taken in, and the alarm."""

    kind: Literal["vacant_usage"] = "vacant_usage"
    room_id: str | None = None
    leased: bool | None = None
    lease_since: datetime | None = None
    lease_at: datetime | None = None
    last_hour: datetime | None = None
    alarm: DebounceState = DebounceState()  # noqa: RUF009 (frozen: one shared default)


def on_vacancy(
    rule: VacantUsageRule, state: VacantUsageState, observation: Observation, now: datetime
) -> tuple[VacantUsageState, list[Decision]]:
    if isinstance(observation, LeaseStatus):
        moved = observation.room_id != state.room_id
        # Within one room a status no newer than the last is stale. A move to another room (or none) is the
        # service's verdict from every room's newest occupancy, which it orders itself; it only must not be ahead.
        if moved and observation.at > now + FUTURE_TOLERANCE:
            return state, []
        if not moved and not fresh(state.lease_at, observation.at, now):
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
    if not isinstance(observation, HourlyConsumption) or not fresh(state.last_hour, observation.hour_start, now - HOUR):
        return state, []
    hour, quantity = observation.hour_start, observation.quantity
    evidence = Evidence.NONE  # an hour before the latest lease change: its status is not known here
    if state.leased is not None and state.lease_since is not None:
        if state.leased and hour >= state.lease_since:
            evidence = Evidence.RELEASE
        elif not state.leased and hour >= state.lease_since + rule.move_out_grace:
            evidence = Evidence.TRIGGER if quantity > rule.tolerance else Evidence.RELEASE
    alarm = debounce(state.alarm, hour + HOUR, evidence, ZERO, rule.clear_after, None, start=hour)
    new = replace(state, last_hour=hour, alarm=alarm)

    def raised() -> Raise:
        return Raise(
            observation.meter_id,
            VACANT_USAGE,
            rule.severity,
            f"无有效租约的房间出现用量：{quantity}（{iso(hour)} 起一小时）",
            f"Consumption in a room without an active lease: {quantity} in the hour from {iso(hour)}",
            {
                "quantity": f"{quantity}",
                "hour_start": iso(hour),
                **({"room_id": state.room_id} if state.room_id else {}),
            },
        )

    return new, edge(state.alarm.active, alarm.active, raised, observation.meter_id, VACANT_USAGE)
