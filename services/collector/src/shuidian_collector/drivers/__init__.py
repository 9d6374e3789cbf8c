"""Protocol drivers: turn a bus exchange into canonical readings and confirmed device commands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shuidian_collector.registry import MeterConfig
from shuidian_collector.transport import BusLink
from shuidian_shared.messages import CommandKind, CommandStatus, Reading, RelayState, ValveState


@dataclass(frozen=True)
class CommandOutcome:
    status: CommandStatus
    detail: str
    request_frame: bytes | None = None
    relay: RelayState | None = None
    valve: ValveState | None = None


class Driver(Protocol):
    async def read(self, link: BusLink, meter: MeterConfig) -> Reading:
        """Read the meter's registers afresh; raise on timeout or a garbled reply (never return stale values)."""
        ...

    async def command(
        self, link: BusLink, meter: MeterConfig, kind: CommandKind, expires_at: datetime
    ) -> CommandOutcome:
        """Send the command and confirm it by reading the state back."""
        ...
