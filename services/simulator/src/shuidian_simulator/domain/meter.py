"""One simulated meter: registers advanced lazily from its consumption model, relay or valve, faults, truth.

Pure: the meter never reads the system clock nor touches an event loop. Real time and the actuator timer come in
through its `SimClock` (the adapters pass the wall clock and the event loop's timer, tests a clock they move)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from shuidian_simulator.domain.consumption import ConsumptionModel, unit_interval
from shuidian_simulator.estate import ONE_SHOT_FAULTS, Fault, FaultKind, MeterSpec

REGISTER_MODULUS = Decimal("1000000")  # a 6+2 digit register wraps after 999999.99
CENT = Decimal("0.01")
SHANGHAI = ZoneInfo("Asia/Shanghai")
HISTORY_LIMIT = 5_000
BROADCAST_TIME_LIMIT_S = 300

RealClock = Callable[[], float]  # real epoch seconds now
Later = Callable[[float, Callable[[], None]], object]  # run an action that many real seconds from now


class SimClock:
    """Real time for meter clocks; accelerated simulated time for consumption and fault windows.

    `real` reads real epoch seconds and `later(delay, action)` runs `action` `delay` real seconds from now (an
    actuator moving): the adapters pass the system clock and the event loop's timer, tests a clock they move."""

    def __init__(
        self, acceleration: Decimal, sim_start: datetime | None = None, *, real: RealClock, later: Later
    ) -> None:
        self.acceleration = float(acceleration)
        self.real = real
        self.later = later
        self.real_start = real()
        self.sim_origin = self.real_start if sim_start is None else sim_start.timestamp()

    def sim_now(self, real: float | None = None) -> float:
        """Simulated epoch seconds at real instant `real` (default now)."""
        return self.sim_origin + self.sim_elapsed(real)

    def sim_elapsed(self, real: float | None = None) -> float:
        """Simulated seconds since the simulation started."""
        real = self.real() if real is None else real
        return (real - self.real_start) * self.acceleration


@dataclass(slots=True)
class TruthInterval:
    """What the meter really measured between two real instants: `quantity` is the true (primary)
    consumption, `registered` what its register advanced by (quantity ÷ CT ratio)."""

    real_from: float
    real_to: float
    quantity: Decimal
    registered: Decimal = Decimal(0)


@dataclass(slots=True)
class MeterEvent:
    """A one-shot change of the meter itself (replacement, rollover jump, CT ratio, cover opened)."""

    at: float  # real epoch seconds
    kind: FaultKind
    detail: dict[str, str]


@dataclass
class SimMeter:
    spec: MeterSpec
    model: ConsumptionModel
    clock: SimClock
    seed: int = 0
    history_limit: int = HISTORY_LIMIT
    exact: Decimal = Decimal(0)  # true consumption since the start, unrounded
    registered: Decimal = Decimal(0)  # what this meter's register counted since it was installed
    base: Decimal = Decimal(0)  # register reading = base + registered (modulo the register width)
    settlement: Decimal = Decimal(0)  # CJ/T 188 settlement-day reading: the register at start or install
    tariffs: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)
    address: str = ""
    ct_ratio: Decimal = Decimal(1)
    relay_open: bool = False
    relay_commanded_trip: bool = False
    keep_power: bool = False
    pre_trip_alarm: bool = False
    clock_correction: float = 0.0  # seconds added by broadcast time corrections
    money: Decimal | None = None
    tamper_count: int = 0
    faults: dict[FaultKind, Fault] = field(default_factory=dict)
    applied: dict[FaultKind, Fault] = field(default_factory=dict)  # one-shot faults already carried out
    advanced_to_real: float = 0.0
    # The real instant the meter was first asked for a value. Truth keeps only intervals in which something was
    # registered, so a first reading taken before anything flowed leaves no interval behind: this says when it was.
    first_advanced_at: float | None = None
    requests: int = 0
    truth: list[TruthInterval] = field(default_factory=list)
    relay_history: list[tuple[float, bool]] = field(default_factory=list)
    events: list[MeterEvent] = field(default_factory=list)

    @classmethod
    def create(
        cls, spec: MeterSpec, model: ConsumptionModel, clock: SimClock, *, seed: int = 0, history_limit: int = 0
    ) -> SimMeter:
        meter = cls(spec=spec, model=model, clock=clock, seed=seed, history_limit=history_limit or HISTORY_LIMIT)
        meter.address = spec.address.upper()
        meter.base = spec.initial_register
        meter.settlement = meter.register
        meter.ct_ratio = spec.ct_ratio
        meter.relay_open = spec.relay_open
        meter.relay_commanded_trip = spec.relay_open
        meter.keep_power = spec.keep_power
        meter.money = spec.prepaid_money
        meter.faults = {f.kind: f for f in spec.faults}
        meter.advanced_to_real = clock.real_start
        return meter

    @property
    def supply_on(self) -> bool:
        """Electricity: relay closed; water: valve open."""
        return not self.relay_open

    def fault(self, kind: FaultKind, real_now: float | None = None) -> Fault | None:
        """The fault of `kind` if it is switched on and inside its time window."""
        fault = self.faults.get(kind)
        if fault is None or not fault.active(self.clock.sim_elapsed(real_now)):
            return None
        return fault

    def advance(self, real_now: float | None = None) -> None:
        """Integrate consumption up to `real_now`; nothing flows while the relay or valve is shut."""
        real_now = self.clock.real() if real_now is None else real_now
        if real_now > self.advanced_to_real:
            self._integrate(real_now)
        self._apply_due(real_now)

    def _integrate(self, real_now: float) -> None:
        if self.first_advanced_at is None:
            self.first_advanced_at = real_now
        added = Decimal(0)
        if self.supply_on:
            spike = self.fault(FaultKind.SPIKE, real_now)
            leak = self.fault(FaultKind.LEAK, real_now)
            for hour, fraction, quantity in self.model.integrate(
                self.clock.sim_now(self.advanced_to_real), self.clock.sim_now(real_now)
            ):
                if spike is not None:
                    quantity *= spike.factor
                if leak is not None:
                    quantity += leak.rate * fraction
                self.tariffs[self.model.segment(hour) - 1] += quantity / self.ct_ratio
                added += quantity
        registered = added / self.ct_ratio
        self.exact += added
        self.registered += registered
        if self.money is not None and added:
            self.money = self.money - added * self.spec.price
        if added:
            self.truth.append(TruthInterval(self.advanced_to_real, real_now, added, registered))
            del self.truth[: -self.history_limit]
        self.advanced_to_real = real_now

    def _apply_due(self, real_now: float) -> None:
        """Carry out one-shot faults that have become active since the last look."""
        for kind in ONE_SHOT_FAULTS & self.faults.keys():
            fault = self.faults[kind]
            if self.applied.get(kind) is fault or not fault.active(self.clock.sim_elapsed(real_now)):
                continue
            self.applied[kind] = fault
            detail: dict[str, str] = {"register_before": str(self.register)}
            if kind is FaultKind.ROLLOVER:
                self.base = fault.value - self.registered  # the register shows `value` and counts on
                self.settlement = fault.value
            elif kind is FaultKind.REPLACEMENT:
                detail["address_before"] = self.address
                self.base, self.registered, self.settlement = Decimal(0), Decimal(0), Decimal(0)
                self.tariffs = [Decimal(0)] * 4
                self.tamper_count = 0
                self.address = (fault.address or self.address).upper()
                detail["address"] = self.address
            elif kind is FaultKind.CT_RATIO:
                detail["ct_ratio_before"] = str(self.ct_ratio)
                self.ct_ratio = fault.factor
                detail["ct_ratio"] = str(fault.factor)
            elif kind is FaultKind.TAMPER:
                self.tamper_count += 1
            detail["register"] = str(self.register)
            self.events.append(MeterEvent(real_now, kind, detail))

    def set_fault(self, fault: Fault, real_now: float | None = None) -> None:
        self.advance(real_now)
        self.faults[fault.kind] = fault
        self.advance(real_now)  # a one-shot fault due now is carried out at once

    def clear_fault(self, kind: FaultKind, real_now: float | None = None) -> None:
        self.advance(real_now)
        self.faults.pop(kind, None)
        self.applied.pop(kind, None)

    def answers(self, real_now: float | None = None) -> bool:
        """Whether the meter answers this request (offline and no-reply faults say no)."""
        self.requests += 1
        if self.fault(FaultKind.OFFLINE, real_now) is not None:
            return False
        no_reply = self.fault(FaultKind.NO_REPLY, real_now)
        return no_reply is None or unit_interval(self.seed, self.spec.id, self.requests, "drop") >= no_reply.probability

    def noisy(self, real_now: float | None = None) -> bool:
        """Whether this reply is replaced by line noise (the noise fault); call after `answers`."""
        noise = self.fault(FaultKind.NOISE, real_now)
        return noise is not None and unit_interval(self.seed, self.spec.id, self.requests, "noise") < noise.probability

    @staticmethod
    def _shown(value: Decimal) -> Decimal:
        # Meters display truncated hundredths and wrap at the register's width.
        return (value % REGISTER_MODULUS).quantize(CENT, rounding=ROUND_DOWN)

    @property
    def register(self) -> Decimal:
        return self._shown(self.base + self.registered)

    @property
    def tariff_registers(self) -> tuple[Decimal, ...]:
        return tuple(self._shown(t) for t in self.tariffs)

    @property
    def remaining_money(self) -> Decimal | None:
        if self.money is None:
            return None
        return max(self.money, Decimal(0)).quantize(CENT, rounding=ROUND_DOWN)

    @property
    def overdraft_money(self) -> Decimal:
        if self.money is None or self.money >= 0:
            return Decimal(0)
        return (-self.money).quantize(CENT, rounding=ROUND_DOWN)

    @property
    def battery_low(self) -> bool:
        return self.fault(FaultKind.BATTERY_LOW) is not None

    @property
    def residual_current_ma(self) -> Decimal:
        """Earth-leakage current (mA): the fault's while supply is on, none otherwise."""
        leakage = self.fault(FaultKind.EARTH_LEAKAGE)
        return leakage.milliamps if leakage is not None and self.supply_on else Decimal(0)

    @property
    def cover_open(self) -> bool:
        return self.fault(FaultKind.TAMPER) is not None

    def rate_now(self) -> Decimal:
        """Instantaneous rate as the register sees it (kW or m³/h, secondary side under a CT)."""
        if not self.supply_on:
            return Decimal(0)
        rate = self.model.rate(int(self.clock.sim_now() // 3600))
        spike = self.fault(FaultKind.SPIKE)
        leak = self.fault(FaultKind.LEAK)
        if spike is not None:
            rate *= spike.factor
        if leak is not None:
            rate += leak.rate
        return rate / self.ct_ratio

    def power_kw(self) -> Decimal:
        return self.rate_now().quantize(Decimal("0.0001"))

    def local_clock(self) -> datetime:
        drift = self.fault(FaultKind.CLOCK_DRIFT)
        seconds = (drift.seconds if drift else 0) + self.clock_correction
        now = datetime.fromtimestamp(self.clock.real(), UTC)
        return (now + timedelta(seconds=seconds)).astimezone(SHANGHAI).replace(tzinfo=None)

    def set_clock(self, at: datetime) -> bool:
        """Broadcast time (naive Beijing time): meters accept a correction of at most 5 minutes."""
        error = (at - self.local_clock()).total_seconds()
        if abs(error) > BROADCAST_TIME_LIMIT_S:
            return False
        self.clock_correction += error
        return True

    def set_relay(self, open_: bool, real_now: float | None = None) -> None:
        self.advance(real_now)
        if self.relay_open != open_:
            self.relay_open = open_
            self.relay_history.append((self.advanced_to_real, open_))
            del self.relay_history[: -self.history_limit]

    def command_relay(self, open_: bool) -> None:
        """A trip/close or valve command was accepted: the actuator moves after its delay, unless stuck."""
        self.relay_commanded_trip = open_
        if self.fault(FaultKind.STUCK_RELAY) is None:
            self.clock.later(self.spec.actuator_seconds, lambda: self.set_relay(open_))

    def consumed_between(self, real_from: float, real_to: float) -> Decimal:
        """Ground truth: quantity added in [real_from, real_to] (whole advance intervals only)."""
        self.advance()
        return sum((t.quantity for t in self.truth if t.real_from >= real_from and t.real_to <= real_to), Decimal(0))

    def truth_view(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Ground truth as plain data: consumption by interval, relay history, meter events."""
        self.advance()
        low = float("-inf") if since is None else since
        high = float("inf") if until is None else until
        intervals = [t for t in self.truth if t.real_from >= low and t.real_to <= high]
        return {
            "meter_id": self.spec.id,
            "utility": self.spec.utility,
            "consumed": str(self.exact),
            "consumed_in_window": str(sum((t.quantity for t in intervals), Decimal(0))),
            "register": str(self.register),
            "first_advanced_at": self.first_advanced_at,
            "intervals": [
                {"from": t.real_from, "to": t.real_to, "quantity": str(t.quantity), "registered": str(t.registered)}
                for t in intervals
            ],
            "relay_history": [{"at": at, "open": is_open} for at, is_open in self.relay_history],
            "events": [{"at": e.at, "kind": e.kind.value, **e.detail} for e in self.events],
        }
