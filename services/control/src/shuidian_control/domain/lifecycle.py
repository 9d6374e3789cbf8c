"""Command facts: terminal states, what each kind does in supply terms for relays and valves, which utility it
is for, retry back-off, which failures are retried."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from shuidian_shared.messages import (
    CommandKind,
    CommandResult,
    CommandState,
    CommandStatus,
    RelayState,
    Utility,
    ValveState,
)

# The collector's answers that no retry can change (the same command would be refused again), and the prefix of the
# failed command's detail: each fails the command at once, and its intent is dropped so reconcile does not resend it.
FINAL_REFUSALS: Mapping[CommandStatus, str] = {
    CommandStatus.UNSUPPORTED: "unsupported 表计不支持",
    CommandStatus.REJECTED: "rejected 参数或凭据无效",
}
TERMINAL_STATES = frozenset({CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED, CommandState.CANCELLED})

# Supply terms for both utilities: CLOSED means supply on, OPEN means cut off (a shut valve is an OPEN supply).
_SUPPLY_AFTER = {
    CommandKind.TRIP: RelayState.OPEN,
    CommandKind.VALVE_CLOSE: RelayState.OPEN,
    CommandKind.DIRECT_CLOSE: RelayState.CLOSED,
    CommandKind.CLOSE_ALLOWED: RelayState.CLOSED,
    CommandKind.VALVE_OPEN: RelayState.CLOSED,
}
_KEEP_POWER_AFTER = {CommandKind.KEEP_POWER_ON: True, CommandKind.KEEP_POWER_OFF: False}
KEEP_POWER_KINDS = frozenset(_KEEP_POWER_AFTER)
_SUPPLY_OF_VALVE = {ValveState.OPEN: RelayState.CLOSED, ValveState.CLOSED: RelayState.OPEN}
_VALVE_OF_SUPPLY = {RelayState.CLOSED: ValveState.OPEN, RelayState.OPEN: ValveState.CLOSED}
_UTILITY_OF_KIND = {
    CommandKind.TRIP: Utility.ELECTRICITY,
    CommandKind.DIRECT_CLOSE: Utility.ELECTRICITY,
    CommandKind.CLOSE_ALLOWED: Utility.ELECTRICITY,
    CommandKind.VALVE_CLOSE: Utility.WATER,
    CommandKind.VALVE_OPEN: Utility.WATER,
}


def supply_after(kind: CommandKind) -> RelayState | None:
    """The supply state a confirmed command leaves behind; None for commands that move no relay or valve."""
    return _SUPPLY_AFTER.get(kind)


def utility_of(kind: CommandKind) -> Utility | None:
    """The utility a relay or valve command is for; None for commands any meter may take."""
    return _UTILITY_OF_KIND.get(kind)


def keep_power_after(kind: CommandKind) -> bool | None:
    """The keep-power mode a confirmed command leaves the meter in; None for commands that do not set it."""
    return _KEEP_POWER_AFTER.get(kind)


def supply_of(relay: RelayState | None, valve: ValveState | None) -> RelayState | None:
    """A reported relay or valve state in supply terms; None when the report says nothing usable."""
    if relay is not None and relay is not RelayState.UNKNOWN:
        return relay
    if valve is not None:
        return _SUPPLY_OF_VALVE.get(valve)
    return None


def valve_of(supply: RelayState | None) -> ValveState | None:
    """A supply state as the valve position that produces it (for display)."""
    return None if supply is None else _VALVE_OF_SUPPLY.get(supply)


def backoff(attempt: int, initial: timedelta, maximum: timedelta) -> timedelta:
    """The wait after a failed `attempt` (1-based) before the next: doubling from `initial`, capped at `maximum`."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    wait: timedelta = initial * 2 ** min(attempt - 1, 30)
    return min(wait, maximum)


def is_retryable(result: CommandResult) -> bool:
    """A failure without an answer from the meter (offline, bus timeout) is worth another attempt; an answer is final.

    A meter that answered and still failed (refused the frame, relay stuck after read-back) will not do better
    on a retry, and the answer frame is the evidence the operator needs.
    """
    return result.status is CommandStatus.FAILED and result.response_frame is None


@dataclass(frozen=True)
class Transition:
    """Where a result moves an open command: the state and its detail; `retry_at` when another attempt follows
    (the command goes back to pending), `refused` for a final refusal (failed, and its intent is dropped)."""

    state: CommandState
    detail: str
    retry_at: datetime | None = None
    refused: CommandStatus | None = None


def after_result(
    state: CommandState,
    attempt: int,
    expires_at: datetime,
    result: CommandResult,
    now: datetime,
    *,
    retry_initial: timedelta,
    retry_max: timedelta,
) -> Transition | None:
    """What the collector's result for one attempt does to a command in `state` at its `attempt`; None: nothing
    (a finished command, news of an older attempt, an acknowledgement repeated)."""
    if state in TERMINAL_STATES:
        return None  # a late result never reopens a finished (or superseded) command
    if result.status is CommandStatus.CONFIRMED:
        return Transition(CommandState.CONFIRMED, result.detail)  # the meter did it, whichever attempt got through
    if result.attempt < attempt:
        return None  # an older attempt's news; the newer attempt is still running
    if result.status is CommandStatus.ACKNOWLEDGED:
        return None if state is CommandState.ACKNOWLEDGED else Transition(CommandState.ACKNOWLEDGED, result.detail)
    if result.status is CommandStatus.EXPIRED:
        return Transition(CommandState.EXPIRED, result.detail)
    label = FINAL_REFUSALS.get(result.status)
    if label is not None:
        return Transition(CommandState.FAILED, f"{label}: {result.detail}", refused=result.status)
    if not is_retryable(result):
        return Transition(CommandState.FAILED, result.detail)
    retry_at = now + backoff(attempt, retry_initial, retry_max)
    if retry_at >= expires_at:
        return Transition(CommandState.EXPIRED, f"no answer after {attempt} attempt(s) before the TTL: {result.detail}")
    return Transition(
        CommandState.PENDING,
        f"attempt {attempt} got no answer ({result.detail}); retry at {retry_at.isoformat()}",
        retry_at=retry_at,
    )
