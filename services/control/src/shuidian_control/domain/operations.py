"""Operator requests (single, batch or scheduled): what each meter gets — a command, a block or nothing.

An operator acts on the device: windows and the balance do not hold a restore, and a trip inside a protected
window is blocked unless the request overrides it (the reason goes on record); 保电 blocks a trip unless the
request lifts it. Commands that move no relay or valve (time sync, parameters, the meter's own keep-power
mode) carry no supply intent and ignore windows.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shuidian_control.domain.calendar import HolidayCalendar
from shuidian_control.domain.decisions import ForceRestore, ForceTrip, Issue, Shadow, Skip, SkipCode, decide_operator
from shuidian_control.domain.lifecycle import supply_after, utility_of
from shuidian_control.domain.policies import EstatePolicy, MeterSupply
from shuidian_control.domain.windows import is_protected
from shuidian_shared.messages import CommandKind, CommandOrigin, RelayState


class Outcome(StrEnum):
    """What an operator request (or its preview) does to one meter."""

    ISSUE = "issue"
    BLOCKED = "blocked"  # refused: 保电, or a protected window without an override
    SKIP = "skip"  # nothing to do (already in that state)


@dataclass(frozen=True)
class OperatorRequest:
    """An operator's (or a schedule's) command over one or many meters."""

    kind: CommandKind
    reason: str
    actor: str
    origin: CommandOrigin = CommandOrigin.OPERATOR
    override_windows: bool = False  # cut off inside a protected window, with the reason on record
    lift_keep_power: bool = False  # clear a household's 保电 flag to trip it, with the reason on record
    parameters: Mapping[str, str] = field(default_factory=dict)
    ttl: timedelta | None = None
    command_id: uuid.UUID | None = None


@dataclass(frozen=True)
class NotIssued:
    """A request that sends nothing to this meter: blocked (wrong utility, 保电, a protected window) or skipped."""

    outcome: Outcome
    detail: str
    kind: CommandKind | None = None


@dataclass(frozen=True)
class MeterOutcome:
    """What a request did (or, previewed, would do) to one meter."""

    meter_id: str
    outcome: Outcome
    detail: str
    kind: CommandKind | None = None
    command_id: uuid.UUID | None = None

    def as_dict(self) -> dict[str, Any]:
        """The outcome as the API lists it."""
        return {
            "meter_id": self.meter_id,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "kind": self.kind.value if self.kind else None,
            "command_id": self.command_id,
        }


def decide_request(
    request: OperatorRequest,
    *,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    calendar: HolidayCalendar,
    now: datetime,
) -> Issue | NotIssued:
    """The command a request sends to one meter, or why it sends none."""
    expected = utility_of(request.kind)
    if expected is not None and supply.utility is not expected:
        return NotIssued(
            Outcome.BLOCKED, f"{request.kind.value} does not apply to a {supply.utility.value} meter", request.kind
        )
    target = supply_after(request.kind)
    if target is None:
        # Time sync, parameters, the meter's own keep-power mode: no supply intent, no windows.
        return Issue(request.kind, f"{request.origin.value} {request.kind.value}: {request.reason}")
    forced = (
        ForceTrip(request.reason, lift_keep_power=request.lift_keep_power)
        if target is RelayState.OPEN
        else ForceRestore(request.reason)
    )
    decision = decide_operator(forced, shadow=shadow, supply=supply, policy=policy)
    if isinstance(decision, Skip):
        blocked = decision.code is SkipCode.KEEP_POWER
        return NotIssued(Outcome.BLOCKED if blocked else Outcome.SKIP, decision.reason)
    if target is RelayState.OPEN:
        protection = is_protected(now, policy.windows, calendar, policy.tz)
        if protection is not None and not request.override_windows:
            return NotIssued(
                Outcome.BLOCKED,
                f"protected window ({protection.rule.value}: {protection.detail}); override with a reason",
                decision.kind,
            )
        if protection is not None:
            return Issue(decision.kind, f"{decision.reason} (overrides {protection.rule.value})")
    return decision
