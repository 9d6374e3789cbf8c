"""The estate file: gateways, the RS-485 buses behind them (one TCP port each) and their meters."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Protocol(StrEnum):
    DLT645 = "dlt645"
    DLT645_1997 = "dlt645-1997"
    CJT188 = "cjt188"
    MODBUS_RTU = "modbus-rtu"
    MODBUS_TCP = "modbus-tcp"


class FaultKind(StrEnum):
    OFFLINE = "offline"  # the meter never answers (on a gateway: the gateway is powered off)
    SLOW = "slow"  # replies after `delay_ms` extra
    GARBAGE = "garbage"  # line noise before every reply
    BAD_CHECKSUM = "bad_checksum"  # replies carry a wrong checksum (Modbus TCP: a wrong MBAP length)
    NO_REPLY = "no_reply"  # a share `probability` of requests goes unanswered (deterministic from the seed)
    NOISE = "noise"  # a share `probability` of replies is line noise only, no valid frame (deterministic)
    STUCK_RELAY = "stuck_relay"  # relay and valve commands are acknowledged but nothing moves
    SPIKE = "spike"  # consumption × `factor`
    LEAK = "leak"  # a continuous extra flow of `rate` per hour (m³/h for water, kW for electricity)
    CLOCK_DRIFT = "clock_drift"  # meter clock off by `seconds`
    EARTH_LEAKAGE = "earth_leakage"  # a residual (earth-leakage) current of `milliamps` while supply is on
    BATTERY_LOW = "battery_low"  # status words report a low battery
    TAMPER = "tamper"  # the cover is opened: the open-cover count goes up once, status shows it while active
    # One-shot events, applied when the fault becomes active (consumption, the truth, goes on unchanged):
    ROLLOVER = "rollover"  # the register jumps to `value` (default 999999.00) to wrap at 999999.99 soon
    REPLACEMENT = "replacement"  # a new meter: registers restart at 0, at `address` when one is given
    CT_RATIO = "ct_ratio"  # the current-transformer ratio becomes `factor`: the register advances 1/factor


ONE_SHOT_FAULTS = frozenset({FaultKind.ROLLOVER, FaultKind.REPLACEMENT, FaultKind.CT_RATIO, FaultKind.TAMPER})


class Fault(BaseModel):
    """A fault of a meter (or, kind `offline` only, of a gateway); `start`/`end` are simulated seconds
    after the simulation started (absent: from the start / for ever)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    delay_ms: int = Field(default=0, ge=0, le=60_000)
    factor: Decimal = Field(default=Decimal(10), gt=0)
    seconds: int = 0
    rate: Decimal = Field(default=Decimal("0.2"), ge=0)
    value: Decimal = Field(default=Decimal("999999.00"), ge=0, lt=Decimal("1000000"))
    address: str | None = Field(default=None, min_length=1, max_length=14)
    probability: Decimal = Field(default=Decimal("0.5"), ge=0, le=1)
    milliamps: Decimal = Field(default=Decimal(50), ge=0, le=Decimal(10_000))
    start: float | None = Field(default=None, ge=0)
    end: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _window(self) -> Fault:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("a fault must end after it starts")
        return self

    def active(self, sim_elapsed: float) -> bool:
        """Whether the fault is on `sim_elapsed` simulated seconds after the simulation started."""
        return (self.start is None or sim_elapsed >= self.start) and (self.end is None or sim_elapsed < self.end)


class Profile(StrEnum):
    RESIDENTIAL = "residential"
    OFFICE = "office"
    VACANT = "vacant"
    COMMON_AREA = "common-area"


class StatusBits(BaseModel):
    """Where a CJ/T 188 meter puts its flags in the ST word (vendors differ; the default is the standard)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    valve_bits: tuple[int, int] = (0, 1)  # (low, high) bit of the 2-bit valve code: 00 open, 01 closed
    battery_low_bit: int = Field(default=2, ge=0, le=15)

    @model_validator(mode="after")
    def _distinct(self) -> StatusBits:
        bits = (*self.valve_bits, self.battery_low_bit)
        if len(set(bits)) != 3 or not all(0 <= b <= 15 for b in bits):
            raise ValueError(f"status bits {bits} must be three distinct positions in 0..15")
        return self


class MeterSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    address: str = Field(min_length=1, max_length=14)
    model: str = "dlt645-generic"
    utility: str = Field(default="electricity", pattern="^(electricity|water)$")
    profile: Profile = Profile.RESIDENTIAL
    initial_register: Decimal = Decimal("0")
    prepaid_money: Decimal | None = None
    price: Decimal = Decimal("0.60")
    relay_open: bool = False  # electricity: relay open (supply cut); water: valve closed
    keep_power: bool = False
    actuator_ms: int | None = Field(default=None, ge=0, le=60_000, description="relay 150 ms, valve 3000 ms if unset")
    ct_ratio: Decimal = Field(default=Decimal(1), gt=0)
    phases: int = Field(default=1, ge=1, le=3, description="Modbus multi-circuit modules: unit ids the circuit takes")
    status_bits: StatusBits = StatusBits()
    faults: tuple[Fault, ...] = ()

    @model_validator(mode="after")
    def _faults_once(self) -> MeterSpec:
        kinds = [f.kind for f in self.faults]
        if len(kinds) != len(set(kinds)):
            raise ValueError(f"meter {self.id}: at most one fault of each kind")
        return self

    @property
    def actuator_seconds(self) -> float:
        default = 3000 if self.utility == "water" else 150
        return (default if self.actuator_ms is None else self.actuator_ms) / 1000


class BusSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    port: int = Field(default=0, ge=0, le=65535)
    protocol: Protocol = Protocol.DLT645
    baud: int = Field(default=2400, ge=300, le=115200)
    reply_delay_ms: int = Field(default=20, ge=0, le=2000)
    meters: tuple[MeterSpec, ...] = ()

    @model_validator(mode="after")
    def _valid_addresses(self) -> BusSpec:
        if self.protocol in (Protocol.MODBUS_RTU, Protocol.MODBUS_TCP):
            taken: list[int] = []
            for m in self.meters:
                if not m.address.isdigit() or not 1 <= int(m.address) <= 247 - (m.phases - 1):
                    raise ValueError(f"bus {self.id}: meter {m.id} needs a Modbus unit id in 1..247")
                taken += range(int(m.address), int(m.address) + m.phases)
            if len(taken) != len(set(taken)):
                raise ValueError(f"bus {self.id}: two meters share a unit id")
            return self
        width = 14 if self.protocol is Protocol.CJT188 else 12
        for m in self.meters:
            if len(m.address) != width or not m.address.isdigit():
                raise ValueError(f"bus {self.id}: meter {m.id} needs a {width}-digit address")
        addresses = [m.address for m in self.meters]
        if len(addresses) != len(set(addresses)):
            raise ValueError(f"bus {self.id}: two meters share an address")
        return self


class GatewaySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    host: str = "127.0.0.1"
    buses: tuple[BusSpec, ...] = ()
    faults: tuple[Fault, ...] = Field(default=(), description="kind `offline` only: the gateway's power cuts")

    @model_validator(mode="after")
    def _gateway_faults(self) -> GatewaySpec:
        if any(f.kind is not FaultKind.OFFLINE for f in self.faults):
            raise ValueError(f"gateway {self.id}: only `offline` faults apply to a gateway")
        return self


class Estate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    acceleration: Decimal = Field(default=Decimal(1), gt=0, description="simulated consumption seconds per real second")
    sim_start: AwareDatetime | None = Field(
        default=None, description="simulated time at start; unset: now, so runs differ by start time"
    )
    truth_limit: int = Field(default=5000, ge=0, description="truth intervals and relay changes kept per meter")
    wire_log_limit: int = Field(default=5000, ge=0, description="frames kept per bus for wire_log")
    gateways: tuple[GatewaySpec, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Estate:
        meters = [m.id for g in self.gateways for b in g.buses for m in b.meters]
        buses = [b.id for g in self.gateways for b in g.buses]
        if len(meters) != len(set(meters)) or len(buses) != len(set(buses)):
            raise ValueError("meter and bus ids must be unique in an estate")
        return self

    @classmethod
    def load(cls, path: Path) -> Estate:
        """Read an estate from YAML or JSON (JSON is YAML; a .json file takes the much faster JSON parser)."""
        text = path.read_text()
        if path.suffix.lower() == ".json":
            return cls.model_validate_json(text)
        return cls.model_validate(yaml.safe_load(text))
