"""Protocol drivers: turn bus exchanges into canonical readings and confirmed device commands.

Every driver maps its meters onto the same canonical register names (energy_active_import_total
in kWh, water_volume_total in m³, …), so nothing downstream knows which protocol a value came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol, TypeVar

from shuidian_collector.registry import BusConfig, MeterConfig
from shuidian_collector.transport import Channel, Link
from shuidian_shared.messages import CommandKind, CommandRequested, CommandStatus, Reading, RelayState, ValveState

S = TypeVar("S")


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


class Driver(Protocol):
    def open(self, bus: BusConfig) -> Link:
        """The link for one bus (one socket or one Modbus client); the scheduler owns and closes it."""
        ...

    def patience(self, meter: MeterConfig) -> Patience:
        """The meter model's timeout and retries, where its profile sets them."""
        ...

    async def read(self, channel: Channel, meter: MeterConfig) -> Reading:
        """Read the meter's registers afresh; raise on timeout or a garbled reply (never return stale values)."""
        ...

    async def command(self, channel: Channel, meter: MeterConfig, request: CommandRequested) -> CommandOutcome:
        """Send the command and confirm it by reading the state back."""
        ...


class CommandRejected(Exception):
    """The command cannot be carried out as asked (bad parameters, missing credentials); nothing was written."""


def requested_parameter(request: CommandRequested, allowed: Collection[str], device: str) -> tuple[str, Decimal]:
    """The (name, value) of a parameter write: `{"name": "<canonical name>", "value": "<decimal string>"}`."""
    name = request.parameters.get("name", "")
    if name not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise CommandRejected(f"parameter {name!r} is not writable on {device}; writable: {listed}")
    raw = request.parameters.get("value", "")
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise CommandRejected(f"value {raw!r} for {name} is not a decimal number") from None
    if not value.is_finite():
        raise CommandRejected(f"value {raw!r} for {name} is not a finite number")
    return name, value


def unsupported(kind: CommandKind, protocol: str) -> CommandOutcome:
    return CommandOutcome(CommandStatus.FAILED, f"{kind.value} is not supported by {protocol} meters")


async def read_back(
    read_state: Callable[[], Awaitable[S]], matches: Callable[[S], bool], policy: ConfirmPolicy
) -> tuple[S, bool]:
    """Read the state until it matches or the attempts run out; the bus is free between reads."""
    state = await read_state()
    for _ in range(policy.attempts):
        if matches(state):
            return state, True
        await asyncio.sleep(policy.interval)
        state = await read_state()
    return state, matches(state)
