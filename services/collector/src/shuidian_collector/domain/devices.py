"""The device model: gateways, the RS-485 buses behind them and the meters on each bus; which addresses and
models suit a bus; which collector shard polls a gateway."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from shuidian_protocols.modbus_profiles import available_profiles
from shuidian_shared.messages import Utility


class BusProtocol(StrEnum):
    DLT645 = "dlt645"
    DLT645_1997 = "dlt645-1997"
    CJT188 = "cjt188"
    MODBUS_RTU = "modbus-rtu"
    MODBUS_TCP = "modbus-tcp"


@dataclass(frozen=True)
class MeterConfig:
    meter_id: str
    address: str
    model: str
    utility: Utility
    poll_interval_s: int


@dataclass(frozen=True)
class BusConfig:
    bus_id: str
    gateway_id: str
    host: str
    port: int
    protocol: BusProtocol
    baud: int
    timeout_ms: int
    retries: int
    meters: tuple[MeterConfig, ...]


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    buses: tuple[BusConfig, ...]


MODBUS = (BusProtocol.MODBUS_RTU, BusProtocol.MODBUS_TCP)
_ADDRESS_FORMS = {
    BusProtocol.DLT645: (re.compile(r"^[0-9]{12}$"), "12 decimal digits"),
    BusProtocol.DLT645_1997: (re.compile(r"^[0-9]{12}$"), "12 decimal digits"),
    BusProtocol.CJT188: (re.compile(r"^[0-9]{14}$"), "14 decimal digits"),
    BusProtocol.MODBUS_RTU: (re.compile(r"^(24[0-7]|2[0-3][0-9]|1[0-9]{2}|[1-9][0-9]?)$"), "a unit id 1..247"),
    BusProtocol.MODBUS_TCP: (re.compile(r"^(24[0-7]|2[0-3][0-9]|1[0-9]{2}|[1-9][0-9]?)$"), "a unit id 1..247"),
}


def meter_problems(protocol: BusProtocol, address: str, model: str) -> list[str]:
    """What is wrong with a meter for a bus of `protocol` (empty when it is fine)."""
    problems = []
    pattern, form = _ADDRESS_FORMS[protocol]
    if not pattern.match(address):
        problems.append(f"address {address!r} is not {form} ({protocol.value})")
    if protocol in MODBUS and model not in available_profiles():
        problems.append(f"no Modbus device profile {model!r} (known: {', '.join(available_profiles())})")
    return problems


def shard_of(gateway_id: str, count: int) -> int:
    """The shard a gateway hashes to. (CRC32 is linear: ids that differ only in their last character, like
    gw-a-0 and gw-a-1, all share their low bit, so `crc32 % 2` put them on one shard.)"""
    digest = hashlib.blake2b(gateway_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def owns(gateway_id: str, shard: int | None, index: int, count: int) -> bool:
    """A gateway belongs to the shard pinned on it, or to the instance its id hashes to."""
    if count == 1:
        return True
    chosen = shard if shard is not None else shard_of(gateway_id, count)
    return chosen % count == index


@dataclass(frozen=True)
class EstateRow:
    """One line of the commissioning CSV: a meter with the bus and gateway it sits behind."""

    gateway_id: str
    bus_id: str
    host: str
    port: int
    protocol: BusProtocol
    baud: int
    timeout_ms: int
    retries: int
    meter_id: str
    address: str
    model: str
    utility: Utility
    poll_interval_s: int
