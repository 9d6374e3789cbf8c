"""Pure decisions: which relay state a balance level asks for, and which command reaches it."""

from __future__ import annotations

from shuidian_shared.messages import BalanceEventKind, CommandKind, RelayState

TERMINAL_STATES = frozenset({"confirmed", "failed", "expired", "cancelled"})


def desired_relay(kind: BalanceEventKind) -> RelayState | None:
    """Exhaustion opens the relay, restoration closes it; other balance events change nothing."""
    if kind is BalanceEventKind.EXHAUSTED:
        return RelayState.OPEN
    if kind is BalanceEventKind.RESTORED:
        return RelayState.CLOSED
    return None


def command_for(target: RelayState, restore_command: CommandKind) -> CommandKind:
    return CommandKind.TRIP if target is RelayState.OPEN else restore_command


def relay_after(kind: CommandKind) -> RelayState | None:
    """The relay state a confirmed command leaves behind."""
    if kind is CommandKind.TRIP:
        return RelayState.OPEN
    if kind in (CommandKind.DIRECT_CLOSE, CommandKind.CLOSE_ALLOWED):
        return RelayState.CLOSED
    return None
