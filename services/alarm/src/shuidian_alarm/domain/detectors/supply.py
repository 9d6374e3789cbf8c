"""Supply mismatch: the relay or valve a meter reports against the control shadow's desired supply."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.observations import Feeds, Observation, SupplyDesired, Tick
from shuidian_alarm.domain.times import fresh, iso, minutes
from shuidian_shared.messages import AlarmSeverity, DeviceState, Reading, RelayState, ValveState

SUPPLY_MISMATCH: Final = "supply_mismatch"


@dataclass(frozen=True, kw_only=True)
class SupplyMismatchRule:
    """The relay or valve the meter reports differs from the shadow's desired supply for longer than `grace`."""

    kind: Literal["supply_mismatch"] = "supply_mismatch"
    grace: timedelta = timedelta(minutes=10)
    severity: AlarmSeverity = AlarmSeverity.MAJOR
    slot: ClassVar[str] = SUPPLY_MISMATCH  # the alarm type it raises; a more specific scope overrides it
    feeds: ClassVar[Feeds] = (SupplyDesired, Reading, DeviceState)  # the observations whose meter it judges
    ticks: ClassVar[bool] = True  # matures with time alone: the service feeds it `Tick`s


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


def on_supply(
    rule: SupplyMismatchRule, state: SupplyMismatchState, observation: Observation, now: datetime
) -> tuple[SupplyMismatchState, list[Decision]]:
    meter_id, desired, desired_at = state.meter_id, state.desired, state.desired_at
    reported, reported_at = state.reported, state.reported_at
    if isinstance(observation, SupplyDesired):
        if fresh(desired_at, observation.at, now):
            meter_id, desired, desired_at = observation.meter_id, observation.supply_on, observation.at
    elif isinstance(observation, Reading | DeviceState):
        at = observation.sampled_at if isinstance(observation, Reading) else observation.occurred_at
        supply = _supply_on(observation.relay, observation.valve)
        if supply is not None and fresh(reported_at, at, now):
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
                f"表计通断状态与期望不符：期望{want}，实际{got}，已超过 {minutes(rule.grace)} 分钟",
                f"Supply state does not match the shadow: wanted {want_en}, meter reports {got_en} for over {minutes(rule.grace)} min",
                {"desired": want_en, "reported": got_en, "since": iso(since)},
            )
        ]
    if new.active and not differ and new.desired is not None:
        return replace(new, active=False), [Clear(meter, SUPPLY_MISMATCH)]
    return new, []
