"""Observations the service feeds the detectors besides `Reading` and `DeviceState`, built from other services'
messages (all instants aware)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shuidian_alarm.domain.times import aware as _aware
from shuidian_shared.messages import BalanceEvent, DeviceState, PollStats, Reading


@dataclass(frozen=True, kw_only=True)
class GatewayStatus:
    """The collector's link to a gateway came up or went down."""

    gateway_id: str
    online: bool
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True, kw_only=True)
class PollWindow:
    """A meter's poll transactions over [start, end): how many were tried and how many failed; `gateway_down`
    when the gateway itself was unreachable (then the failures are the gateway's, not the meter's)."""

    meter_id: str
    start: datetime
    end: datetime
    attempts: int
    failures: int
    gateway_down: bool = False

    def __post_init__(self) -> None:
        _aware(self.start)
        _aware(self.end)
        if self.end <= self.start:
            raise ValueError("a poll window must end after it starts")
        if not 0 <= self.failures <= self.attempts:
            raise ValueError("failures must lie between 0 and attempts")


@dataclass(frozen=True, kw_only=True)
class HourlyConsumption:
    """A meter's consumption over one hour starting at `hour_start` (kWh or m³)."""

    meter_id: str
    hour_start: datetime
    quantity: Decimal

    def __post_init__(self) -> None:
        _aware(self.hour_start)
        if self.quantity < 0:
            raise ValueError("consumption cannot be negative")


@dataclass(frozen=True, kw_only=True)
class LeaseStatus:
    """Whether the room a meter supplies has an active lease, as of `at`: since `since` (default `at`), in room
    `room_id`. `leased=None` with no room: the meter supplies no room now (unbound), so it counts for none."""

    meter_id: str
    leased: bool | None
    at: datetime
    since: datetime | None = None
    room_id: str | None = None

    def __post_init__(self) -> None:
        _aware(self.at)
        if self.since is not None:
            _aware(self.since)
        if self.room_id is not None and self.leased is None:
            raise ValueError("a meter bound to a room has a lease status")


@dataclass(frozen=True, kw_only=True)
class ServerBalance:
    """The server-side balance of the account that pays for a meter, as of `at`."""

    meter_id: str
    balance: Decimal
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True, kw_only=True)
class SupplyDesired:
    """The control shadow's desired supply for a meter (relay closed / valve open = on), from `at` on."""

    meter_id: str
    supply_on: bool
    at: datetime

    def __post_init__(self) -> None:
        _aware(self.at)


@dataclass(frozen=True)
class Tick:
    """Time passed: lets conditions on retained states mature without a new observation."""


MeterObservation = Reading | DeviceState | PollWindow | HourlyConsumption | LeaseStatus | ServerBalance | SupplyDesired
"""An observation about one meter (all but a gateway's status and the tick)."""
Feeds = tuple[type[MeterObservation], ...]
"""The observation types a rule judges its meter by (`feeds` of each rule class)."""

Observation = MeterObservation | GatewayStatus | Tick


def server_balances(event: BalanceEvent) -> list[ServerBalance]:
    """One ServerBalance per meter the account's balance supplies."""
    return [ServerBalance(meter_id=m.meter_id, balance=event.balance, at=event.occurred_at) for m in event.meters]


def poll_windows(stats: PollStats) -> list[PollWindow]:
    """One PollWindow per meter of a gateway's poll statistics."""
    return [
        PollWindow(
            meter_id=m.meter_id,
            start=stats.window_start,
            end=stats.window_end,
            attempts=m.attempts,
            failures=m.failures,
            gateway_down=stats.gateway_down,
        )
        for m in stats.meters
    ]
