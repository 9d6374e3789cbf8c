"""One simulated meter: registers advanced lazily from its consumption model, relay, faults, truth."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from zoneinfo import ZoneInfo

from shuidian_simulator.consumption import ConsumptionModel
from shuidian_simulator.estate import Fault, FaultKind, MeterSpec

REGISTER_MODULUS = Decimal("1000000")  # a 6+2 digit register wraps after 999999.99
CENT = Decimal("0.01")
SHANGHAI = ZoneInfo("Asia/Shanghai")
HISTORY_LIMIT = 10_000


class SimClock:
    """Real time for meter clocks; accelerated simulated time for consumption."""

    def __init__(self, acceleration: Decimal) -> None:
        self.acceleration = float(acceleration)
        self.real_start = time.time()

    def sim_now(self, real: float | None = None) -> float:
        real = time.time() if real is None else real
        return self.real_start + (real - self.real_start) * self.acceleration


@dataclass
class TruthInterval:
    """What the simulator really added to a register between two real instants."""

    real_from: float
    real_to: float
    quantity: Decimal


@dataclass
class SimMeter:
    spec: MeterSpec
    model: ConsumptionModel
    clock: SimClock
    exact: Decimal = Decimal(0)  # consumption since the start, unrounded
    tariffs: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)
    relay_open: bool = False
    relay_commanded_trip: bool = False
    keep_power: bool = False
    money: Decimal | None = None
    faults: dict[FaultKind, Fault] = field(default_factory=dict)
    advanced_to_real: float = 0.0
    truth: list[TruthInterval] = field(default_factory=list)
    relay_history: list[tuple[float, bool]] = field(default_factory=list)

    @classmethod
    def create(cls, spec: MeterSpec, model: ConsumptionModel, clock: SimClock) -> SimMeter:
        meter = cls(spec=spec, model=model, clock=clock)
        meter.relay_open = spec.relay_open
        meter.relay_commanded_trip = spec.relay_open
        meter.keep_power = spec.keep_power
        meter.money = spec.prepaid_money
        meter.faults = {f.kind: f for f in spec.faults}
        meter.advanced_to_real = clock.real_start
        return meter

    @property
    def supply_on(self) -> bool:
        return not self.relay_open

    def advance(self, real_now: float | None = None) -> None:
        """Integrate consumption up to `real_now`; nothing flows while the relay is open."""
        real_now = time.time() if real_now is None else real_now
        if real_now <= self.advanced_to_real:
            return
        added = Decimal(0)
        if self.supply_on:
            spike = self.faults.get(FaultKind.SPIKE)
            for hour, quantity in self.model.integrate(
                self.clock.sim_now(self.advanced_to_real), self.clock.sim_now(real_now)
            ):
                if spike is not None:
                    quantity *= spike.factor
                self.tariffs[self.model.segment(hour) - 1] += quantity
                added += quantity
        self.exact += added
        if self.money is not None and added:
            self.money = self.money - added * self.spec.price
        if added:
            self.truth.append(TruthInterval(self.advanced_to_real, real_now, added))
            del self.truth[:-HISTORY_LIMIT]
        self.advanced_to_real = real_now

    @staticmethod
    def _shown(value: Decimal) -> Decimal:
        # Meters display truncated hundredths and wrap at the register's width.
        return (value % REGISTER_MODULUS).quantize(CENT, rounding=ROUND_DOWN)

    @property
    def register(self) -> Decimal:
        return self._shown(self.spec.initial_register + self.exact)

    @property
    def tariff_registers(self) -> tuple[Decimal, ...]:
        return tuple(self._shown(t) for t in self.tariffs)

    @property
    def remaining_money(self) -> Decimal | None:
        if self.money is None:
            return None
        return max(self.money, Decimal(0)).quantize(CENT, rounding=ROUND_DOWN)

    def power_kw(self) -> Decimal:
        if not self.supply_on:
            return Decimal(0)
        return self.model.rate(int(self.clock.sim_now() // 3600)).quantize(Decimal("0.0001"))

    def local_clock(self) -> datetime:
        drift = self.faults.get(FaultKind.CLOCK_DRIFT)
        now = datetime.now(UTC) + timedelta(seconds=drift.seconds if drift else 0)
        return now.astimezone(SHANGHAI).replace(tzinfo=None)

    def set_relay(self, open_: bool) -> None:
        self.advance()
        if self.relay_open != open_:
            self.relay_open = open_
            self.relay_history.append((time.time(), open_))
            del self.relay_history[:-HISTORY_LIMIT]

    def consumed_between(self, real_from: float, real_to: float) -> Decimal:
        """Ground truth: quantity added in [real_from, real_to] (whole advance intervals only)."""
        self.advance()
        return sum((t.quantity for t in self.truth if t.real_from >= real_from and t.real_to <= real_to), Decimal(0))
