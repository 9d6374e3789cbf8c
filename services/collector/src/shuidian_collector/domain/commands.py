"""Device command rules without I/O: the outcome a command ends with, how long to wait for a relay or valve to move,
a meter model's patience, and the answers to commands refused before anything is written."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shuidian_collector.errors import CommandRejected, CommandUnsupported
from shuidian_protocols import dlt645
from shuidian_shared.messages import CommandKind, CommandRequested, CommandStatus, RelayState, ValveState


@dataclass(frozen=True)
class CommandOutcome:
    status: CommandStatus
    detail: str
    request_frame: bytes | None = None
    relay: RelayState | None = None
    valve: ValveState | None = None
    response_frame: bytes | None = None


@dataclass(frozen=True)
class ConfirmPolicy:
    """How long to wait for a relay or valve to move: read the state back `attempts` times, `interval` apart."""

    attempts: int = 5
    interval: float = 0.3


RELAY_CONFIRM = ConfirmPolicy()
VALVE_CONFIRM = ConfirmPolicy(10, 1.0)  # a valve motor takes seconds


@dataclass(frozen=True)
class Patience:
    """A meter model's own timeout (seconds) and retries; None keeps the bus's."""

    timeout: float | None = None
    retries: int | None = None


BUS_DEFAULTS = Patience()


def refused(err: CommandRejected) -> CommandOutcome:
    """The result of a command the collector refused before writing anything to the meter.

    Both answers are final: sending the same command again would be refused again, so control must not
    retry it until its TTL (as it does a `failed` without an answer frame).
    """
    if isinstance(err, CommandUnsupported):
        return CommandOutcome(CommandStatus.UNSUPPORTED, str(err))
    return CommandOutcome(
        CommandStatus.REJECTED, f"采集器拒绝执行，未写入表计: refused by the collector, nothing written: {err}"
    )


def requested_parameter(request: CommandRequested, allowed: Collection[str], device: str) -> tuple[str, Decimal]:
    """The (name, value) of a parameter write: `{"name": "<canonical name>", "value": "<decimal string>"}`."""
    name = request.parameters.get("name", "")
    if name not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise CommandUnsupported(
            f"不支持写参数 {name!r}: parameter {name!r} is not writable on {device}; writable: {listed}"
        )
    raw = request.parameters.get("value", "")
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise CommandRejected(f"value {raw!r} for {name} is not a decimal number") from None
    if not value.is_finite():
        raise CommandRejected(f"value {raw!r} for {name} is not a finite number")
    return name, value


def unsupported(kind: CommandKind, device: str, why: str = "") -> CommandOutcome:
    """The answer to a command the meter cannot do: `unsupported`, final, nothing sent."""
    because = f": {why}" if why else ""
    return CommandOutcome(
        CommandStatus.UNSUPPORTED, f"表计不支持此命令 {kind.value}: not supported by {device} meters{because}"
    )


def dlt645_confirms(status: dlt645.StatusWord3, kind: CommandKind) -> bool:
    """Whether DL/T 645 status word 3 read back shows the relay command `kind` carried out."""
    if kind is CommandKind.KEEP_POWER_ON:
        return status.keep_power
    if kind is CommandKind.KEEP_POWER_OFF:
        return not status.keep_power
    if kind is CommandKind.TRIP:
        return status.relay_open
    if kind is CommandKind.DIRECT_CLOSE:
        return not status.relay_open
    return not status.relay_commanded_trip  # close-allowed: the meter may re-close; the tenant closes it
