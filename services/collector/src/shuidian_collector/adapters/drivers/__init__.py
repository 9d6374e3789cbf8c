"""Protocol drivers: turn bus exchanges into canonical readings and confirmed device commands.

Every driver maps its meters onto the same canonical register names (energy_active_import_total
in kWh, water_volume_total in m³, …), so nothing downstream knows which protocol a value came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from shuidian_collector.adapters.transport import Channel, Link
from shuidian_collector.domain.commands import CommandOutcome, ConfirmPolicy, Patience
from shuidian_collector.domain.devices import BusConfig, MeterConfig
from shuidian_shared.messages import CommandRequested, Reading

S = TypeVar("S")


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
