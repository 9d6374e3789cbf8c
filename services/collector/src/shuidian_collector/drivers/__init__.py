"""Protocol drivers: turn bus exchanges into canonical readings and confirmed device commands.

Every driver maps its meters onto the same canonical register names (energy_active_import_total
in kWh, water_volume_total in m³, …), so nothing downstream knows which protocol a value came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol, TypeVar

from shuidian_collector.registry import BusConfig, MeterConfig
from shuidian_collector.transport import Channel, Link
from shuidian_shared.messages import (
    CLOCK_OFFSET,
    CommandKind,
    CommandRequested,
    CommandStatus,
    Reading,
    ReadingFlag,
    RelayState,
    ValveState,
)

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
class ClockPolicy:
    """Time sync: how close the read-back clock must be, and the largest offset a broadcast may correct. Polls:
    how often a meter's clock offset is reported (DL/T 645 spends two exchanges on it) and the offset beyond which
    a reading is flagged `clock_drift`."""

    tolerance_s: float = 5.0
    broadcast_limit_s: float = 300.0
    check_interval_s: float = 3600.0
    drift_tolerance_s: float = 60.0


CLOCK_DEFAULTS = ClockPolicy()


class ClockWatch:
    """Reports a meter's clock offset on a poll once per `check_interval_s` per meter, not on every poll."""

    def __init__(self, policy: ClockPolicy) -> None:
        self.policy = policy
        self._reported: dict[str, float] = {}  # meter → monotonic time of its last report

    def due(self, meter_id: str) -> bool:
        last = self._reported.get(meter_id)
        return last is None or time.monotonic() - last >= self.policy.check_interval_s

    def report(self, meter_id: str, offset_s: float, registers: dict[str, Decimal], flags: set[ReadingFlag]) -> None:
        """Put the offset (meter clock − true time, whole seconds) in the reading; flag drift beyond the tolerance."""
        self._reported[meter_id] = time.monotonic()
        registers[CLOCK_OFFSET] = Decimal(round(offset_s))
        if abs(offset_s) > self.policy.drift_tolerance_s:
            flags.add(ReadingFlag.CLOCK_DRIFT)


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
    """The command cannot be carried out as asked (a value the meter cannot take, missing or malformed
    credentials): reported `rejected`, which control treats as final; nothing was written."""


class CommandUnsupported(CommandRejected):
    """The meter's model or protocol cannot do this at all (no such parameter, an unconfirmed register):
    reported `unsupported`, which control treats as final; nothing was written."""


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
