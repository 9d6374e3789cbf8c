"""DL/T 645 data identifiers the platform reads, and pure conversions between their payloads and values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import assert_never

from shuidian_protocols.common import bcd_decode, bcd_encode, bcd_from_decimal, decimal_from_bcd
from shuidian_protocols.errors import ValueEncodingError

__all__ = [
    "CATALOGUE",
    "CATALOGUE_1997",
    "DataItem",
    "MeterType",
    "StatusWord1",
    "StatusWord3",
    "Value",
    "ValueKind",
    "decode_value",
    "decode_value_1997",
    "encode_value",
    "encode_value_1997",
]

# A read reply carries at most 200 data bytes, 4 of which are the DI.
_MAX_PAYLOAD = 196


class ValueKind(Enum):
    """How a data item's payload maps to a Python value."""

    DECIMAL = "decimal"
    BLOCK = "block"
    COUNT = "count"
    DATE = "date"
    TIME = "time"
    STATUS_WORD_1 = "status_word_1"
    STATUS_WORD_3 = "status_word_3"


@dataclass(frozen=True, slots=True)
class DataItem:
    """One data identifier: BCD layout of its payload (`size` bytes; blocks hold `elements` equal parts)."""

    di: int
    name: str
    unit: str
    size: int
    decimals: int = 0
    signed: bool = False
    kind: ValueKind = ValueKind.DECIMAL
    elements: int = 1

    @property
    def element_size(self) -> int:
        return self.size // self.elements


class MeterType(IntEnum):
    """Status word 3 bits 9..8."""

    ORDINARY = 0
    ENERGY_PREPAID = 1
    MONEY_PREPAID = 2
    RESERVED = 3


def _bit(flag: bool, position: int) -> int:
    return int(flag) << position


def _word_from(data: bytes) -> int:
    if len(data) != 2:
        raise ValueEncodingError(f"status word needs 2 bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def _check_word(raw: int) -> None:
    if not 0 <= raw <= 0xFFFF:
        raise ValueEncodingError(f"status word {raw} out of range")


_SW1_MODELLED = 1 << 2 | 1 << 3 | 1 << 4


@dataclass(frozen=True, slots=True)
class StatusWord1:
    """Meter running status word 1 (04000501); the named flags win over the same bits of `raw`."""

    clock_battery_low: bool = False
    reading_battery_low: bool = False
    power_reversed: bool = False
    raw: int = 0

    def __post_init__(self) -> None:
        _check_word(self.raw)
        # raw keeps the bits we do not model, so a word read from a meter is written back unchanged.
        word = (
            self.raw & ~_SW1_MODELLED
            | _bit(self.clock_battery_low, 2)
            | _bit(self.reading_battery_low, 3)
            | _bit(self.power_reversed, 4)
        )
        object.__setattr__(self, "raw", word)

    @classmethod
    def from_bytes(cls, data: bytes) -> StatusWord1:
        word = _word_from(data)
        return cls(
            clock_battery_low=bool(word & 1 << 2),
            reading_battery_low=bool(word & 1 << 3),
            power_reversed=bool(word & 1 << 4),
            raw=word,
        )

    def to_bytes(self) -> bytes:
        return self.raw.to_bytes(2, "little")


_SW3_MODELLED = 1 << 4 | 1 << 6 | 1 << 7 | 0b11 << 8 | 1 << 12


@dataclass(frozen=True, slots=True)
class StatusWord3:
    """Meter running status word 3 (04000503, operating state); the named fields win over `raw`."""

    relay_open: bool = False
    relay_commanded_trip: bool = False
    pre_trip_alarm: bool = False
    meter_type: MeterType = MeterType.ORDINARY
    keep_power: bool = False
    raw: int = 0

    def __post_init__(self) -> None:
        _check_word(self.raw)
        try:
            meter_type = MeterType(self.meter_type)
        except ValueError as err:
            raise ValueEncodingError(f"meter type {self.meter_type!r} is not 0..3") from err
        word = (
            self.raw & ~_SW3_MODELLED
            | _bit(self.relay_open, 4)
            | _bit(self.relay_commanded_trip, 6)
            | _bit(self.pre_trip_alarm, 7)
            | meter_type << 8
            | _bit(self.keep_power, 12)
        )
        object.__setattr__(self, "meter_type", meter_type)
        object.__setattr__(self, "raw", word)

    @classmethod
    def from_bytes(cls, data: bytes) -> StatusWord3:
        word = _word_from(data)
        return cls(
            relay_open=bool(word & 1 << 4),
            relay_commanded_trip=bool(word & 1 << 6),
            pre_trip_alarm=bool(word & 1 << 7),
            meter_type=MeterType(word >> 8 & 0b11),
            keep_power=bool(word & 1 << 12),
            raw=word,
        )

    def to_bytes(self) -> bytes:
        return self.raw.to_bytes(2, "little")


Value = Decimal | tuple[Decimal, ...] | date | time | StatusWord1 | StatusWord3 | int

_TARIFFS = ("total", "spike", "peak", "flat", "valley")  # tariffs 1..4 are 尖峰平谷
_PHASES = ("a", "b", "c")


def _catalogue_2007() -> dict[int, DataItem]:
    items: list[DataItem] = []
    # Combined active energy may go negative (export exceeds import), so the standard gives it a sign bit.
    for base, name, signed in (
        (0x00000000, "combined_active_energy", True),
        (0x00010000, "forward_active_energy", False),
    ):
        for index, tariff in enumerate(_TARIFFS):
            items.append(DataItem(base | index << 8, f"{name}_{tariff}", "kWh", 4, 2, signed))
        items.append(DataItem(base | 0xFF00, f"{name}_block", "kWh", 20, 2, signed, ValueKind.BLOCK, 5))
    for index, phase in enumerate(_PHASES, start=1):
        items.append(DataItem(0x02010000 | index << 8, f"voltage_{phase}", "V", 2, 1))
        items.append(DataItem(0x02020000 | index << 8, f"current_{phase}", "A", 3, 3, True))
    items += [
        DataItem(0x0201FF00, "voltage_block", "V", 6, 1, False, ValueKind.BLOCK, 3),
        DataItem(0x0202FF00, "current_block", "A", 9, 3, True, ValueKind.BLOCK, 3),
        DataItem(0x02030000, "active_power_total", "kW", 3, 4, True),
        DataItem(0x02060000, "power_factor_total", "", 2, 3, True),
        DataItem(0x02800002, "frequency", "Hz", 2, 2),
        DataItem(0x00900100, "remaining_energy", "kWh", 4, 2),
        DataItem(0x00900101, "overdraft_energy", "kWh", 4, 2),
        DataItem(0x00900200, "remaining_money", "CNY", 4, 2),
        DataItem(0x00900201, "overdraft_money", "CNY", 4, 2),
        DataItem(0x03330201, "purchase_count", "", 2, kind=ValueKind.COUNT),
        DataItem(0x04001001, "alarm_money_limit_1", "CNY", 4, 2),
        DataItem(0x04001002, "alarm_money_limit_2", "CNY", 4, 2),
        DataItem(0x04001004, "overdraft_money_limit", "CNY", 4, 2),  # 透支金额限值
        DataItem(0x04000E01, "active_power_upper_limit", "kW", 3, 4),  # 正向有功功率上限值 (load limit)
        DataItem(0x04000101, "date", "", 4, kind=ValueKind.DATE),
        DataItem(0x04000102, "time", "", 3, kind=ValueKind.TIME),
        DataItem(0x04000501, "status_word_1", "", 2, kind=ValueKind.STATUS_WORD_1),
        DataItem(0x04000503, "status_word_3", "", 2, kind=ValueKind.STATUS_WORD_3),
    ]
    return {item.di: item for item in items}


CATALOGUE: Mapping[int, DataItem] = MappingProxyType(_catalogue_2007())

# DL/T 645-1997 layouts (2-byte DIs); PROTOCOLS.md names the DIs, the formats follow the 1997 data table.
CATALOGUE_1997: Mapping[int, DataItem] = MappingProxyType(
    {
        0x9010: DataItem(0x9010, "forward_active_energy_total", "kWh", 4, 2),
        0xB611: DataItem(0xB611, "voltage_a", "V", 2, 0),
        0xB621: DataItem(0xB621, "current_a", "A", 2, 2),
        0xB630: DataItem(0xB630, "active_power_total", "kW", 3, 4),
    }
)


def _lookup(catalogue: Mapping[int, DataItem], di: int) -> DataItem:
    item = catalogue.get(di)
    if item is None:
        raise ValueEncodingError(f"DI {di:08X} is not in the catalogue")
    return item


def _check_size(item: DataItem, payload: bytes) -> None:
    if len(payload) != item.size:
        raise ValueEncodingError(f"DI {item.di:08X} needs {item.size} bytes, got {len(payload)}")


def _bcd_field(byte: int) -> int:
    return bcd_decode(bytes([byte]))


def _decode_date(payload: bytes) -> date:
    # Wire order WW DD MM YY; the weekday is redundant and meters get it wrong, so it is only BCD-checked.
    _week, day, month, year = (_bcd_field(b) for b in payload)
    try:
        return date(2000 + year, month, day)
    except ValueError as err:
        raise ValueEncodingError(f"not a date: {payload.hex(' ')}") from err


def _decode_time(payload: bytes) -> time:
    second, minute, hour = (_bcd_field(b) for b in payload)
    try:
        return time(hour, minute, second)
    except ValueError as err:
        raise ValueEncodingError(f"not a time: {payload.hex(' ')}") from err


def _decode_block(item: DataItem, payload: bytes) -> tuple[Decimal, ...]:
    # Meters answer a block with as many elements as they have (more tariffs, or one phase), so any
    # whole number of elements is accepted rather than exactly the nominal count.
    step = item.element_size
    if not payload or len(payload) % step or len(payload) > _MAX_PAYLOAD:
        raise ValueEncodingError(f"DI {item.di:08X} block length {len(payload)} is not a multiple of {step}")
    return tuple(
        decimal_from_bcd(payload[i : i + step], item.decimals, signed=item.signed) for i in range(0, len(payload), step)
    )


def _decode(item: DataItem, payload: bytes) -> Value:
    if item.kind is ValueKind.BLOCK:
        return _decode_block(item, payload)
    _check_size(item, payload)
    match item.kind:
        case ValueKind.DECIMAL:
            return decimal_from_bcd(payload, item.decimals, signed=item.signed)
        case ValueKind.COUNT:
            return bcd_decode(payload)
        case ValueKind.DATE:
            return _decode_date(payload)
        case ValueKind.TIME:
            return _decode_time(payload)
        case ValueKind.STATUS_WORD_1:
            return StatusWord1.from_bytes(payload)
        case ValueKind.STATUS_WORD_3:
            return StatusWord3.from_bytes(payload)
    assert_never(item.kind)


def _encode_decimal(item: DataItem, value: object, size: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueEncodingError(f"DI {item.di:08X} needs a Decimal, got {value!r}")
    exact = Decimal(value)
    if not exact.is_finite() or exact.copy_abs() >= Decimal(10) ** (2 * size - item.decimals):
        raise ValueEncodingError(f"{value} does not fit DI {item.di:08X}")
    # quantize then compare exactly, so a value with more decimals than the field is refused, never rounded.
    quantised = exact.quantize(Decimal(1).scaleb(-item.decimals))
    if quantised != exact:
        raise ValueEncodingError(f"{value} has more than {item.decimals} decimals for DI {item.di:08X}")
    return bcd_from_decimal(quantised, size, item.decimals, signed=item.signed)


def _encode_block(item: DataItem, value: object) -> bytes:
    if not isinstance(value, tuple) or not value or len(value) * item.element_size > _MAX_PAYLOAD:
        raise ValueEncodingError(f"DI {item.di:08X} needs a non-empty tuple of Decimals, got {value!r}")
    return b"".join(_encode_decimal(item, element, item.element_size) for element in value)


def _encode_date(value: object) -> bytes:
    if not isinstance(value, date):
        raise ValueEncodingError(f"date DI needs a date, got {value!r}")
    if not 2000 <= value.year <= 2099:
        raise ValueEncodingError(f"year {value.year} is outside 2000..2099")
    week = value.isoweekday() % 7  # the meter counts Sunday as 0
    return bytes(bcd_encode(field, 1)[0] for field in (week, value.day, value.month, value.year - 2000))


def _encode_time(value: object) -> bytes:
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueEncodingError(f"time DI needs a naive time, got {value!r}")
    # The wire carries whole seconds.
    return bytes(bcd_encode(field, 1)[0] for field in (value.second, value.minute, value.hour))


def _encode(item: DataItem, value: object) -> bytes:
    match item.kind:
        case ValueKind.DECIMAL:
            return _encode_decimal(item, value, item.size)
        case ValueKind.BLOCK:
            return _encode_block(item, value)
        case ValueKind.COUNT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueEncodingError(f"DI {item.di:08X} needs an int, got {value!r}")
            return bcd_encode(value, item.size)
        case ValueKind.DATE:
            return _encode_date(value)
        case ValueKind.TIME:
            return _encode_time(value)
        case ValueKind.STATUS_WORD_1:
            if not isinstance(value, StatusWord1):
                raise ValueEncodingError(f"DI {item.di:08X} needs a StatusWord1, got {value!r}")
            return value.to_bytes()
        case ValueKind.STATUS_WORD_3:
            if not isinstance(value, StatusWord3):
                raise ValueEncodingError(f"DI {item.di:08X} needs a StatusWord3, got {value!r}")
            return value.to_bytes()
    assert_never(item.kind)


def decode_value(di: int, payload: bytes) -> Value:
    """Decode the payload of a DL/T 645-2007 read reply (the bytes after the DI) into its value."""
    return _decode(_lookup(CATALOGUE, di), payload)


def encode_value(di: int, value: Value) -> bytes:
    """Encode a value as the payload a meter sends for `di`; the inverse of `decode_value`."""
    return _encode(_lookup(CATALOGUE, di), value)


def decode_value_1997(di: int, payload: bytes) -> Decimal:
    """Decode the payload of a DL/T 645-1997 read reply into its value."""
    item = _lookup(CATALOGUE_1997, di)
    _check_size(item, payload)
    return decimal_from_bcd(payload, item.decimals, signed=item.signed)


def encode_value_1997(di: int, value: Decimal) -> bytes:
    """Encode a value as a DL/T 645-1997 meter sends it for `di`; the inverse of `decode_value_1997`."""
    item = _lookup(CATALOGUE_1997, di)
    return _encode_decimal(item, value, item.size)
