"""The estate file: gateways, the RS-485 buses behind them (one TCP port each) and their meters."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Protocol(StrEnum):
    DLT645 = "dlt645"
    DLT645_1997 = "dlt645-1997"
    CJT188 = "cjt188"
    MODBUS_RTU = "modbus-rtu"
    MODBUS_TCP = "modbus-tcp"


class FaultKind(StrEnum):
    OFFLINE = "offline"  # the meter never answers
    SLOW = "slow"  # replies after `delay_ms` extra
    GARBAGE = "garbage"  # line noise before every reply
    BAD_CHECKSUM = "bad_checksum"  # replies carry a wrong checksum
    STUCK_RELAY = "stuck_relay"  # relay commands are acknowledged but nothing moves
    SPIKE = "spike"  # consumption × `factor`
    CLOCK_DRIFT = "clock_drift"  # meter clock off by `seconds`


class Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    delay_ms: int = 0
    factor: Decimal = Decimal(10)
    seconds: int = 0


class Profile(StrEnum):
    RESIDENTIAL = "residential"
    OFFICE = "office"
    VACANT = "vacant"
    COMMON_AREA = "common-area"


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
    relay_open: bool = False
    keep_power: bool = False
    faults: tuple[Fault, ...] = ()


class BusSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    port: int = Field(default=0, ge=0, le=65535)
    protocol: Protocol = Protocol.DLT645
    baud: int = Field(default=2400, ge=300, le=115200)
    reply_delay_ms: int = Field(default=20, ge=0, le=2000)
    meters: tuple[MeterSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_addresses(self) -> BusSpec:
        addresses = [m.address for m in self.meters]
        if len(addresses) != len(set(addresses)):
            raise ValueError(f"bus {self.id}: two meters share an address")
        return self


class GatewaySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    host: str = "127.0.0.1"
    buses: tuple[BusSpec, ...] = ()


class Estate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    acceleration: Decimal = Field(default=Decimal(1), gt=0, description="simulated consumption seconds per real second")
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
        """Read an estate from YAML or JSON (JSON is YAML)."""
        return cls.model_validate(yaml.safe_load(path.read_text()))
