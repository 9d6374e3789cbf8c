"""Trip, close, defer or skip: pure decisions over balance changes, 保电, protected windows and operator requests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeAlias

from shuidian_control.domain.calendar import HolidayCalendar
from shuidian_control.domain.lifecycle import supply_after
from shuidian_control.domain.policies import EstatePolicy, MeterSupply
from shuidian_control.domain.windows import is_protected, next_allowed
from shuidian_control.errors import NoAllowedInstant
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandOrigin,
    RelayState,
    Utility,
)

# The core is pure, so the caller keeps the state it reasons over. It must:
# - set `shadow.desired = issue.supply` (bumping the version) whenever it sends an Issue;
# - keep per account the highest balance-event sequence seen (any kind) as `last_sequence`, and the level;
# - remember each Defer and call `on_deferral_due` at `until` (for `until=None`: when the policy changes);
# - call `on_keep_power_changed` whenever a household's or the estate's 保电 flag is set or lifted;
# - clear the 保电 flag (and the meter's own keep-power mode) before sending a `ForceTrip(lift_keep_power=True)`;
# - send the `keep_power_command` a 保电 change calls for, and hold a trip while the meter is still reported in
#   keep-power mode after a KEEP_POWER_OFF (the meter refuses trips in that mode): send it once that is confirmed.
# A deferred trip leaves the shadow alone, so `reconcile` cannot push it through a protected window.
# Supply states are RelayState in supply terms for both utilities (CLOSED: on, OPEN: cut off), so a
# water meter's OPEN shadow means its valve is shut.

DEFAULT_REISSUE_INTERVAL = timedelta(minutes=5)


@dataclass(frozen=True)
class Shadow:
    """A meter's supply intent (desired, None before any) and last report (reported), versioned by intent."""

    desired: RelayState | None
    reported: RelayState | None
    version: int = 0


@dataclass(frozen=True)
class BalanceChange:
    """A balance event reduced to what control acts on."""

    kind: BalanceEventKind
    sequence: int

    @classmethod
    def of(cls, event: BalanceEvent) -> BalanceChange:
        """The change a billing BalanceEvent announces."""
        return cls(event.kind, event.sequence)


@dataclass(frozen=True)
class ForceTrip:
    """An operator cuts supply now, protected windows notwithstanding; 保电 still wins unless lifted here."""

    reason: str
    lift_keep_power: bool = False


@dataclass(frozen=True)
class ForceRestore:
    """An operator restores supply now, whatever the balance."""

    reason: str


ForcedSupply: TypeAlias = ForceTrip | ForceRestore


@dataclass(frozen=True)
class LastCommand:
    """The newest relay/valve command sent for a meter, as reconcile needs it."""

    target: RelayState
    version: int
    issued_at: datetime
    expires_at: datetime
    finished: bool
    origin: CommandOrigin = CommandOrigin.BILLING

    def in_flight(self, now: datetime) -> bool:
        """Still awaiting an outcome and not past its TTL."""
        return not self.finished and now < self.expires_at


@dataclass(frozen=True)
class LastModeCommand:
    """The newest keep-power mode command sent for a meter, as reconcile needs it."""

    keep_power: bool
    issued_at: datetime
    expires_at: datetime
    finished: bool

    def in_flight(self, now: datetime) -> bool:
        """Still awaiting an outcome and not past its TTL."""
        return not self.finished and now < self.expires_at


@dataclass(frozen=True)
class Issue:
    """Send this command now."""

    kind: CommandKind
    reason: str

    @property
    def supply(self) -> RelayState:
        """The supply state the command produces: the caller's new `shadow.desired`."""
        supply = supply_after(self.kind)
        if supply is None:
            raise ValueError(f"{self.kind.value} moves no relay or valve")
        return supply


@dataclass(frozen=True)
class Defer:
    """Not now: re-evaluate at `until` (None: no allowed instant is known — re-evaluate when the policy changes)."""

    until: datetime | None
    reason: str


class SkipCode(StrEnum):
    """Why nothing is sent, for metrics and tests."""

    STALE = "stale"  # an event at or below the last sequence seen
    NOT_ACTIONABLE = "not_actionable"  # low-balance and changed events move no relay
    NOT_PREPAID = "not_prepaid"  # billing drives water valves only where the estate prepays water
    KEEP_POWER = "keep_power"
    ALREADY = "already"  # the intent already matches
    NOT_EXHAUSTED = "not_exhausted"  # a deferred trip whose account recovered meanwhile
    NO_INTENT = "no_intent"
    STALE_INTENT = "stale_intent"  # the shadow read predates the last command
    REPORTED_UNKNOWN = "reported_unknown"
    CONVERGED = "converged"


@dataclass(frozen=True)
class Skip:
    """Send nothing."""

    reason: str
    code: SkipCode


Decision: TypeAlias = Issue | Defer | Skip


def command_for(target: RelayState, utility: Utility, restore: CommandKind) -> CommandKind:
    """The command that brings a meter's supply to `target`."""
    if target is RelayState.UNKNOWN:
        raise ValueError("no command reaches an unknown state")
    if utility is Utility.WATER:
        return CommandKind.VALVE_CLOSE if target is RelayState.OPEN else CommandKind.VALVE_OPEN
    return CommandKind.TRIP if target is RelayState.OPEN else restore


def decide_balance(
    event: BalanceChange,
    *,
    last_sequence: int | None,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    calendar: HolidayCalendar,
    now: datetime,
) -> Decision:
    """Exhaustion trips (unless 保电, deferred in a protected window), restoration closes at once; stale events skip."""
    if last_sequence is not None and event.sequence <= last_sequence:
        return Skip(f"stale balance event #{event.sequence} (already at #{last_sequence})", SkipCode.STALE)
    if event.kind is BalanceEventKind.EXHAUSTED:
        return _trip(f"balance exhausted (#{event.sequence})", shadow, supply, policy, calendar, now)
    if event.kind is BalanceEventKind.RESTORED:
        return _restore(f"balance restored (#{event.sequence})", shadow, supply, policy)
    return Skip(f"balance {event.kind.value} (#{event.sequence}) moves no relay", SkipCode.NOT_ACTIONABLE)


def on_deferral_due(
    level: BalanceLevel,
    *,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    calendar: HolidayCalendar,
    now: datetime,
) -> Decision:
    """A deferred trip falls due: trip only if the account is still exhausted, under the policy as it is now."""
    if level is not BalanceLevel.EXHAUSTED:
        return Skip(f"deferred trip dropped: balance is {level.value} now", SkipCode.NOT_EXHAUSTED)
    return _trip("deferred trip due, balance still exhausted", shadow, supply, policy, calendar, now)


def on_keep_power_changed(
    level: BalanceLevel,
    *,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    calendar: HolidayCalendar,
    now: datetime,
) -> Decision:
    """保电 set: a cut supply comes back. 保电 lifted: an exhausted account is tripped under the usual windows."""
    keep = keep_power_in_force(supply, policy)
    if keep is not None:
        if shadow.desired is RelayState.OPEN:
            return _restore(f"{keep} set", shadow, supply, policy)
        return Skip(f"{keep} set; supply already on", SkipCode.ALREADY)
    if level is not BalanceLevel.EXHAUSTED:
        return Skip(f"keep-power lifted; balance is {level.value}", SkipCode.NOT_EXHAUSTED)
    return _trip("keep-power lifted, balance exhausted", shadow, supply, policy, calendar, now)


def decide_operator(
    request: ForcedSupply, *, shadow: Shadow, supply: MeterSupply, policy: EstatePolicy
) -> Issue | Skip:
    """An operator's request: ignores protected windows and the balance, never 保电 unless explicitly lifted."""
    if isinstance(request, ForceRestore):
        target = RelayState.CLOSED
        reason = f"operator restore: {request.reason}"
    else:
        keep = keep_power_in_force(supply, policy)
        if keep is not None and not request.lift_keep_power:
            return Skip(f"operator trip refused: {keep}; lift it explicitly to trip", SkipCode.KEEP_POWER)
        target = RelayState.OPEN
        reason = f"operator trip: {request.reason}"
        if keep is not None:
            reason += f" ({keep} lifted by the operator)"
    # An operator acts on the device: re-send unless the meter already reports what is intended.
    if shadow.desired is target and shadow.reported is target:
        return Skip(f"{reason}: supply already {target.value}", SkipCode.ALREADY)
    return Issue(command_for(target, supply.utility, policy.restore), reason)


def keep_power_command(utility: Utility, in_force: bool, desired: bool | None) -> CommandKind | None:
    """The meter's own keep-power command that makes an electricity meter follow its 保电 flags, or None.

    A meter that never had keep-power from control (`desired` None) is not sent KEEP_POWER_OFF.
    """
    if utility is not Utility.ELECTRICITY or desired is in_force or (desired is None and not in_force):
        return None
    return CommandKind.KEEP_POWER_ON if in_force else CommandKind.KEEP_POWER_OFF


def reconcile_keep_power(
    desired: bool | None,
    reported: bool | None,
    now: datetime,
    last_command: LastModeCommand | None,
    *,
    min_interval: timedelta = DEFAULT_REISSUE_INTERVAL,
) -> Decision:
    """Re-send the meter's keep-power mode when it reports otherwise (a replaced meter, a lost command)."""
    if desired is None:
        return Skip("no keep-power mode intended for this meter", SkipCode.NO_INTENT)
    if reported is None:
        return Skip("meter keep-power mode unknown; wait for a reading", SkipCode.REPORTED_UNKNOWN)
    if reported is desired:
        return Skip(f"meter keep-power {_on_off(reported)} as desired", SkipCode.CONVERGED)
    reason = f"reconcile: meter keep-power {_on_off(reported)}, desired {_on_off(desired)}"
    if last_command is not None:
        if last_command.keep_power is desired and last_command.in_flight(now):
            return Defer(last_command.expires_at, f"{reason}; the last command is still in flight")
        if now < last_command.issued_at + min_interval:
            return Defer(last_command.issued_at + min_interval, f"{reason}; re-issue interval not yet elapsed")
    return Issue(CommandKind.KEEP_POWER_ON if desired else CommandKind.KEEP_POWER_OFF, reason)


def _on_off(keep_power: bool) -> str:
    return "on" if keep_power else "off"


def reconcile(
    shadow: Shadow,
    now: datetime,
    last_command: LastCommand | None,
    *,
    supply: MeterSupply,
    policy: EstatePolicy,
    calendar: HolidayCalendar,
    min_interval: timedelta = DEFAULT_REISSUE_INTERVAL,
) -> Decision:
    """Re-send the desired state when the meter reports otherwise (reconnect, hand-closed relay, lost command)."""
    desired = shadow.desired
    if desired is None or desired is RelayState.UNKNOWN:
        return Skip("no intent recorded for this meter", SkipCode.NO_INTENT)
    if last_command is not None and last_command.version > shadow.version:
        return Skip(
            f"shadow v{shadow.version} is older than the last command (v{last_command.version}); re-read it",
            SkipCode.STALE_INTENT,
        )
    reported = shadow.reported
    if reported is None or reported is RelayState.UNKNOWN:
        return Skip("meter state unknown; wait for a reading", SkipCode.REPORTED_UNKNOWN)
    if reported is desired:
        return Skip(f"meter reports {reported.value} as desired", SkipCode.CONVERGED)
    reason = f"reconcile: meter reports {reported.value}, desired {desired.value} (v{shadow.version})"
    if last_command is not None:
        same_intent = last_command.target is desired and last_command.version == shadow.version
        if same_intent and last_command.in_flight(now):
            return Defer(last_command.expires_at, f"{reason}; the last command is still in flight")
        if now < last_command.issued_at + min_interval:
            return Defer(last_command.issued_at + min_interval, f"{reason}; re-issue interval not yet elapsed")
    if desired is RelayState.OPEN:
        keep = keep_power_in_force(supply, policy)
        if keep is not None:
            return Skip(f"{reason}; not re-tripped under {keep}", SkipCode.KEEP_POWER)
        # An operator's forced trip keeps its exemption from protected windows when it is re-sent.
        forced = (
            last_command is not None
            and last_command.origin is CommandOrigin.OPERATOR
            and last_command.target is desired
            and last_command.version == shadow.version
        )
        if not forced:
            deferred = _deferral(reason, policy, calendar, now)
            if deferred is not None:
                return deferred
    return Issue(command_for(desired, supply.utility, policy.restore), reason)


def keep_power_in_force(supply: MeterSupply, policy: EstatePolicy) -> str | None:
    """The 保电 flag that covers the meter (household first, then estate), described; None when there is none."""
    if supply.keep_power is not None:
        return f"household keep-power ({supply.keep_power.describe()})"
    if policy.keep_power is not None:
        return f"estate keep-power ({policy.keep_power.describe()})"
    return None


def _trip(
    reason: str, shadow: Shadow, supply: MeterSupply, policy: EstatePolicy, calendar: HolidayCalendar, now: datetime
) -> Decision:
    if supply.utility is Utility.WATER and not policy.prepaid_water:
        return Skip(f"{reason}: estate does not prepay water", SkipCode.NOT_PREPAID)
    keep = keep_power_in_force(supply, policy)
    if keep is not None:
        return Skip(f"{reason}: not tripped under {keep}", SkipCode.KEEP_POWER)
    if shadow.desired is RelayState.OPEN:
        return Skip(f"{reason}: supply already cut off", SkipCode.ALREADY)
    deferred = _deferral(reason, policy, calendar, now)
    if deferred is not None:
        return deferred
    return Issue(command_for(RelayState.OPEN, supply.utility, policy.restore), reason)


def _restore(reason: str, shadow: Shadow, supply: MeterSupply, policy: EstatePolicy) -> Issue | Skip:
    # A valve in an estate that does not prepay water was shut by an operator (a leak, say): billing leaves it be.
    if supply.utility is Utility.WATER and not policy.prepaid_water:
        return Skip(f"{reason}: estate does not prepay water", SkipCode.NOT_PREPAID)
    if shadow.desired is RelayState.CLOSED:
        return Skip(f"{reason}: supply already on", SkipCode.ALREADY)
    return Issue(command_for(RelayState.CLOSED, supply.utility, policy.restore), reason)


def _deferral(reason: str, policy: EstatePolicy, calendar: HolidayCalendar, now: datetime) -> Defer | None:
    protection = is_protected(now, policy.windows, calendar, policy.tz)
    if protection is None:
        return None
    try:
        until: datetime | None = next_allowed(now, policy.windows, calendar, policy.tz, horizon=policy.horizon)
    except NoAllowedInstant as err:
        until = err.resume_at
    when = "until the policy changes" if until is None else f"until {until.astimezone(policy.tz):%Y-%m-%d %H:%M %Z}"
    return Defer(until, f"{reason}: trip deferred {when} ({protection.rule.value}: {protection.detail})")
