"""CJ/T 188 (2004 and 2018 editions) frame codec for water, heat and gas meters: bytes in, values out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum, IntEnum

from shuidian_protocols.common import (
    FrameCutter,
    address_bytes,
    bcd_decode,
    bcd_encode,
    bcd_from_decimal,
    checksum,
    decimal_from_bcd,
    target_address,
)
from shuidian_protocols.errors import ChecksumError, DeviceError, FrameError, ValueEncodingError

__all__ = [
    "KNOWN_DATA_IDS",
    "MAX_DATA_LENGTH",
    "MAX_PREAMBLE",
    "WILDCARD_ADDRESS",
    "CurrentData",
    "DataId",
    "DiOrder",
    "Frame",
    "Function",
    "MeterErrorReply",
    "MeterStatus",
    "MeterType",
    "ReadAddressRequest",
    "ReadRequest",
    "Request",
    "StatusLayout",
    "StreamParser",
    "Unit",
    "ValveRequest",
    "ValveState",
    "addressed_to",
    "decode_frame",
    "decode_request",
    "decode_status",
    "encode_address_reply",
    "encode_current_data_reply",
    "encode_error_reply",
    "encode_frame",
    "encode_valve_ack",
    "parse_address_reply",
    "parse_current_data",
    "parse_valve_ack",
    "read_address_request",
    "read_request",
    "valve_request",
]

WILDCARD_ADDRESS = "AAAAAAAAAAAAAA"
MAX_DATA_LENGTH = 0x64  # the standard caps L at 64H (reads) and 32H (writes); anything longer is line noise
MAX_PREAMBLE = 4  # masters send 2..4 FE, meters 0..4

_START = 0x68
_END = 0x16
_PREAMBLE = 0xFE
_HEADER = 11  # 68 T A0..A6 C L
_OVERHEAD = 13  # header + CS + 16
_ADDRESS_DIGITS = 14

_REPLY = 0x80
_ERROR = 0x40
_FUNCTION_MASK = 0x3F  # D5..D0; 1xxxxx codes are vendor-defined

_VALVE_OPEN = 0x55
_VALVE_CLOSE = 0x99
_CURRENT_DATA_LENGTH = 0x16  # DI, SER, 2 × (4 B flow + unit), 7 B time, 2 B status


class MeterType(IntEnum):
    """T, the meter type byte."""

    COLD_WATER = 0x10
    HOT_WATER = 0x11
    DRINKING_WATER = 0x12
    RECLAIMED_WATER = 0x13
    HEAT = 0x20
    COOLING = 0x21
    HEAT_AND_COOLING = 0x22
    GAS = 0x30
    ANY = 0xAA


class Function(IntEnum):
    """Function code: the low six bits of the control byte."""

    READ = 0x01
    READ_ADDRESS = 0x03
    WRITE = 0x04
    READ_KEY_VERSION = 0x09
    WRITE_ADDRESS = 0x15
    WRITE_METER_BASE = 0x16


class DataId(IntEnum):
    """Data identifiers this codec builds or answers."""

    CURRENT_DATA = 0x901F
    READ_ADDRESS = 0x810A
    VALVE_CONTROL = 0xA017


# DIs of the 2004 edition (current and 12 historic readings, price/settlement/reading-day/purchase/key reads,
# the A0xx writes). Only these let us tell which edition's byte order a request used: a DI travels as
# `90 1F` (2004) or `1F 90` (2018) and no DI here is another one's byte swap.
KNOWN_DATA_IDS = frozenset({0x901F, *range(0xD120, 0xD12C), *range(0x8102, 0x8107), 0x810A, *range(0xA010, 0xA01A)})


class DiOrder(Enum):
    """Byte order of the data identifier on the wire."""

    V2004 = "2004"  # high byte first: 90 1F
    V2018 = "2018"  # low byte first: 1F 90


class Unit(IntEnum):
    """Unit codes that follow a quantity."""

    J = 0x01
    WH = 0x02
    KWH = 0x05
    MWH = 0x08
    MWH_X100 = 0x0A
    KJ = 0x0B
    MJ = 0x0E
    GJ = 0x11
    GJ_X100 = 0x13
    W = 0x14
    KW = 0x17
    MW = 0x1A
    LITRE = 0x29
    M3 = 0x2C
    LITRE_PER_H = 0x32
    M3_PER_H = 0x35


class ValveState(Enum):
    """Valve position reported in the status word."""

    OPEN = "open"
    CLOSED = "closed"
    ABNORMAL = "abnormal"


class MeterErrorReply(DeviceError):
    """The meter answered with an error reply (C with bit 6 set); `status` is its raw ST word."""

    def __init__(self, function: int, status: int, seq: int | None) -> None:
        super().__init__(f"meter refused function {function:02X}: status {status:04X}")
        self.function = function
        self.status = status
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Frame:
    """One CJ/T 188 frame; `address` reads most significant digit first."""

    meter_type: int
    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & _FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & _REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & _ERROR)


# ---------------------------------------------------------------- envelope


def _own_address(address: str) -> str:
    """A replying meter's own address: 14 decimal digits."""
    if len(address) != 14 or not address.isdigit() or not address.isascii():
        raise ValueEncodingError(f"meter address {address!r} must be 14 decimal digits")
    return address


def _byte(value: int, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueEncodingError(f"{what} {value} is outside 0..255")
    return value


def encode_frame(frame: Frame, *, preamble: int = 2) -> bytes:
    """Serialise a frame with its checksum, end byte and `preamble` wake-up FE bytes."""
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise ValueEncodingError(f"preamble of {preamble} FE bytes is outside 0..{MAX_PREAMBLE}")
    if len(frame.data) > MAX_DATA_LENGTH:
        raise ValueEncodingError(f"{len(frame.data)} data bytes exceed {MAX_DATA_LENGTH}")
    body = (
        bytes([_START, _byte(frame.meter_type, "meter type")])
        + address_bytes(frame.address, _ADDRESS_DIGITS)
        + bytes([_byte(frame.control, "control byte"), len(frame.data)])
        + frame.data
    )
    return bytes([_PREAMBLE]) * preamble + body + bytes([checksum(body), _END])


def _parse(raw: bytes) -> Frame:
    """Parse exactly one frame that starts at its 68 (no preamble)."""
    if len(raw) < _OVERHEAD:
        raise FrameError(f"{len(raw)} bytes are too short for a frame")
    if raw[0] != _START:
        raise FrameError("missing 68 start byte")
    length = raw[10]
    if length > MAX_DATA_LENGTH:
        raise FrameError(f"data length {length} exceeds {MAX_DATA_LENGTH}")
    if len(raw) != _OVERHEAD + length:
        raise FrameError(f"data length {length} does not match {len(raw)} frame bytes")
    if raw[-1] != _END:
        raise FrameError(f"end byte {raw[-1]:02X} is not 16")
    if checksum(raw[:-2]) != raw[-2]:
        raise ChecksumError(f"checksum {raw[-2]:02X} should be {checksum(raw[:-2]):02X}")
    return Frame(meter_type=raw[1], address=raw[8:1:-1].hex().upper(), control=raw[9], data=bytes(raw[11:-2]))


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame, optionally preceded by up to four FE bytes."""
    raw = bytes(raw)
    body = raw.lstrip(bytes([_PREAMBLE]))
    if len(raw) - len(body) > MAX_PREAMBLE:
        raise FrameError(f"{len(raw) - len(body)} FE bytes before the frame, at most {MAX_PREAMBLE} allowed")
    return _parse(body)


class StreamParser(FrameCutter[Frame]):
    """Cut CJ/T 188 frames out of a byte stream; bad candidates are counted, never raised.

    Every 68 byte is a candidate start (CJ/T 188 has no second 68 to confirm a header), so `rejected`
    also counts 68 bytes in line noise whose would-be frame fails the length, end-byte or checksum test.
    """

    def __init__(self) -> None:
        super().__init__(_parse, header=_HEADER, length_at=10, max_length=MAX_DATA_LENGTH)


def addressed_to(frame: Frame, address: str, meter_type: int) -> bool:
    """Whether a request is for the meter at `address` of `meter_type` (AA bytes and type AA are wildcards)."""
    if frame.meter_type not in (MeterType.ANY, meter_type):
        return False
    target = frame.address.upper()
    own = address.upper()
    return all(target[i : i + 2] in ("AA", own[i : i + 2]) for i in range(0, _ADDRESS_DIGITS, 2))


# ---------------------------------------------------------------- field helpers


def _di_bytes(di: int, order: DiOrder) -> bytes:
    if not 0 <= di <= 0xFFFF:
        raise ValueEncodingError(f"DI {di:#x} does not fit 2 bytes")
    return di.to_bytes(2, "big" if order is DiOrder.V2004 else "little")


def _di_from(data: bytes) -> tuple[int, DiOrder]:
    """The DI at the start of `data` and the order it came in; unknown DIs are taken as sent (2004 order)."""
    as_2004 = data[0] << 8 | data[1]
    as_2018 = data[1] << 8 | data[0]
    if as_2004 not in KNOWN_DATA_IDS and as_2018 in KNOWN_DATA_IDS:
        return as_2018, DiOrder.V2018
    # Re-encoding an unknown DI in 2004 order gives back the bytes as received, so the echo is still right.
    return as_2004, DiOrder.V2004


def _expect_di(data: bytes, di: int) -> DiOrder:
    if len(data) < 2:
        raise FrameError("reply too short for a data identifier")
    for order in DiOrder:
        if data[:2] == _di_bytes(di, order):
            return order
    raise FrameError(f"reply carries DI bytes {data[:2].hex(' ')}, not {di:04X} in either order")


def _seq(seq: int) -> bytes:
    return bytes([_byte(seq, "sequence number")])


def _status_bytes(status: int) -> bytes:
    # ST travels low byte first: status byte 1 (valve, battery) is bits 0..7 of the word.
    if not 0 <= status <= 0xFFFF:
        raise ValueEncodingError(f"status word {status} is outside 0..FFFF")
    return status.to_bytes(2, "little")


def _datetime_bytes(at: datetime) -> bytes:
    if at.tzinfo is not None:
        raise ValueEncodingError("meter time is local wall-clock time: pass a naive datetime")
    # ss mm hh DD MM YYYY (year low byte first), whole seconds; microseconds are dropped.
    fields = (at.second, at.minute, at.hour, at.day, at.month)
    return b"".join(bcd_encode(field, 1) for field in fields) + bcd_encode(at.year, 2)


def _datetime_from(data: bytes) -> datetime:
    second, minute, hour, day, month = (bcd_decode(data[i : i + 1]) for i in range(5))
    year = bcd_decode(data[5:7])
    try:
        return datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - meter-local wall clock
    except ValueError as err:
        raise ValueEncodingError(f"not a date-time: {data.hex(' ')}") from err


def _unit(code: int) -> Unit:
    try:
        return Unit(code)
    except ValueError as err:
        raise ValueEncodingError(f"unknown unit code {code:02X}") from err


# ---------------------------------------------------------------- status word


@dataclass(frozen=True)
class StatusLayout:
    """Bit positions (0..15 of the ST word, status byte 1 = bits 0..7) of the standard status flags.

    The standard puts the valve in bits 1..0 and battery-low in bit 2; some vendors number the bits the
    other way round (valve in bits 7..6, battery in bit 5), so the positions are per meter model.
    """

    valve_bits: tuple[int, int] = (0, 1)  # (low bit, high bit) of the 2-bit valve code
    battery_low_bit: int = 2

    def __post_init__(self) -> None:
        bits = (*self.valve_bits, self.battery_low_bit)
        if len(self.valve_bits) != 2 or any(not 0 <= bit <= 15 for bit in bits) or len(set(bits)) != 3:
            raise ValueError(f"status layout needs three distinct bit positions in 0..15, got {bits}")


@dataclass(frozen=True)
class MeterStatus:
    """The decoded ST word; `raw` keeps the vendor-defined bits."""

    valve: ValveState
    battery_low: bool
    raw: int


# Valve code = high bit << 1 | low bit: 00 open, 01 closed, 11 abnormal; 10 is undefined, so abnormal too.
_VALVE_CODES = {0b00: ValveState.OPEN, 0b01: ValveState.CLOSED, 0b10: ValveState.ABNORMAL, 0b11: ValveState.ABNORMAL}


_STANDARD_LAYOUT = StatusLayout()


def decode_status(raw: int, layout: StatusLayout = _STANDARD_LAYOUT) -> MeterStatus:
    """Decode a 16-bit ST word with the vendor's bit layout."""
    if not 0 <= raw <= 0xFFFF:
        raise ValueEncodingError(f"status word {raw} is outside 0..FFFF")
    low, high = layout.valve_bits
    code = (raw >> high & 1) << 1 | (raw >> low & 1)
    return MeterStatus(valve=_VALVE_CODES[code], battery_low=bool(raw >> layout.battery_low_bit & 1), raw=raw)


@dataclass(frozen=True)
class CurrentData:
    """A water or gas meter's current reading (DI 901F)."""

    cumulative: Decimal
    unit: Unit
    settlement: Decimal  # flow at the last settlement day
    settlement_unit: Unit
    meter_time: datetime  # naive, meter-local
    status: MeterStatus
    seq: int
    order: DiOrder


# ---------------------------------------------------------------- master side (collector)


def _request(address: str, meter_type: int, function: int, data: bytes) -> bytes:
    return encode_frame(Frame(meter_type, target_address(address, _ADDRESS_DIGITS), function, data))


def read_request(
    address: str,
    meter_type: int = MeterType.COLD_WATER,
    *,
    di: int = DataId.CURRENT_DATA,
    seq: int = 0,
    order: DiOrder = DiOrder.V2004,
) -> bytes:
    """Read one data identifier (function 01); 901F is the current reading."""
    return _request(address, meter_type, Function.READ, _di_bytes(di, order) + _seq(seq))


def read_address_request(meter_type: int = MeterType.ANY, *, seq: int = 0, order: DiOrder = DiOrder.V2004) -> bytes:
    """Read the address of the only meter on the bus (function 03, DI 810A, to AA…AA)."""
    return _request(
        WILDCARD_ADDRESS, meter_type, Function.READ_ADDRESS, _di_bytes(DataId.READ_ADDRESS, order) + _seq(seq)
    )


def valve_request(
    address: str, meter_type: int, *, open_valve: bool, seq: int = 0, order: DiOrder = DiOrder.V2004
) -> bytes:
    """Open or close the valve (function 04, DI A017); the motor takes seconds, so re-read the status after."""
    command = _VALVE_OPEN if open_valve else _VALVE_CLOSE
    return _request(
        address, meter_type, Function.WRITE, _di_bytes(DataId.VALVE_CONTROL, order) + _seq(seq) + bytes([command])
    )


def _expect_reply(frame: Frame, function: int) -> None:
    if not frame.is_reply or frame.function != function:
        raise FrameError(f"control {frame.control:02X} is not a reply to function {function:02X}")
    if frame.is_error:
        # The standard's error reply is SER + ST; some meters put the DI in front. Both end in SER, ST.
        data = frame.data
        status = int.from_bytes(data[-2:], "little") if len(data) >= 2 else 0
        raise MeterErrorReply(function, status, data[-3] if len(data) >= 3 else None)


def parse_current_data(frame: Frame, *, layout: StatusLayout = _STANDARD_LAYOUT) -> CurrentData:
    """Decode a water or gas meter's 901F reply (either DI order); an error reply raises MeterErrorReply."""
    _expect_reply(frame, Function.READ)
    data = frame.data
    if len(data) != _CURRENT_DATA_LENGTH:
        # Heat meters answer 901F with a longer, different layout: refusing beats misreading it.
        raise FrameError(f"901F reply has {len(data)} data bytes, not {_CURRENT_DATA_LENGTH}")
    order = _expect_di(data, DataId.CURRENT_DATA)
    return CurrentData(
        cumulative=decimal_from_bcd(data[3:7], 2),
        unit=_unit(data[7]),
        settlement=decimal_from_bcd(data[8:12], 2),
        settlement_unit=_unit(data[12]),
        meter_time=_datetime_from(data[13:20]),
        status=decode_status(int.from_bytes(data[20:22], "little"), layout),
        seq=data[2],
        order=order,
    )


def parse_valve_ack(frame: Frame) -> None:
    """Check the reply to a valve command (84: DI A017, SER and usually ST); an error reply raises MeterErrorReply."""
    _expect_reply(frame, Function.WRITE)
    if len(frame.data) not in (3, 5):
        raise FrameError(f"valve reply has {len(frame.data)} data bytes, not 3 or 5")
    _expect_di(frame.data, DataId.VALVE_CONTROL)


def parse_address_reply(frame: Frame) -> str:
    """The address a meter reported in its read-address reply (it travels in the header)."""
    _expect_reply(frame, Function.READ_ADDRESS)
    return frame.address


# ---------------------------------------------------------------- slave side (simulator)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    address: str
    meter_type: int
    di: int
    seq: int
    order: DiOrder


@dataclass(frozen=True, slots=True)
class ValveRequest:
    address: str
    meter_type: int
    di: int
    seq: int
    order: DiOrder
    open_valve: bool


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    address: str
    meter_type: int
    di: int
    seq: int
    order: DiOrder


Request = ReadRequest | ValveRequest | ReadAddressRequest


def decode_request(frame: Frame) -> Request:
    """Decode a request a master sent; writes other than the valve and other functions raise FrameError."""
    if frame.is_reply:
        raise FrameError(f"control {frame.control:02X} is a reply, not a request")
    data = frame.data
    match frame.function:
        case Function.READ | Function.READ_ADDRESS:
            if len(data) != 3:
                raise FrameError(f"function {frame.function:02X} request with {len(data)} data bytes, not 3")
            di, order = _di_from(data)
            kind = ReadRequest if frame.function == Function.READ else ReadAddressRequest
            return kind(frame.address, frame.meter_type, di, data[2], order)
        case Function.WRITE:
            if len(data) < 3:
                raise FrameError(f"write request with {len(data)} data bytes")
            di, order = _di_from(data)
            if di != DataId.VALVE_CONTROL:
                raise FrameError(f"unsupported write DI {data[:2].hex(' ')}")
            if len(data) != 4 or data[3] not in (_VALVE_OPEN, _VALVE_CLOSE):
                raise ValueEncodingError(f"valve command {data[3:].hex(' ')} is neither 55 (open) nor 99 (close)")
            return ValveRequest(frame.address, frame.meter_type, di, data[2], order, data[3] == _VALVE_OPEN)
    raise FrameError(f"unsupported function {frame.function:02X}")


def _reply(address: str, meter_type: int, function: int, data: bytes, *, error: bool = False) -> bytes:
    control = _REPLY | (_ERROR if error else 0) | function
    return encode_frame(Frame(meter_type, _own_address(address), control, data))


def encode_current_data_reply(
    address: str,
    meter_type: int,
    *,
    cumulative: Decimal,
    unit: Unit,
    settlement: Decimal,
    settlement_unit: Unit,
    meter_time: datetime,
    status_raw: int,
    seq: int,
    order: DiOrder,
) -> bytes:
    """A meter's 901F reply (81); flows must be exact to two decimals, up to 999999.99."""
    data = (
        _di_bytes(DataId.CURRENT_DATA, order)
        + _seq(seq)
        + bcd_from_decimal(cumulative, 4, 2)
        + bytes([_unit(unit)])
        + bcd_from_decimal(settlement, 4, 2)
        + bytes([_unit(settlement_unit)])
        + _datetime_bytes(meter_time)
        + _status_bytes(status_raw)
    )
    return _reply(address, meter_type, Function.READ, data)


def encode_valve_ack(address: str, meter_type: int, *, seq: int, order: DiOrder, status_raw: int = 0) -> bytes:
    """A meter's reply to a valve command (84): DI A017, SER and its ST word."""
    data = _di_bytes(DataId.VALVE_CONTROL, order) + _seq(seq) + _status_bytes(status_raw)
    return _reply(address, meter_type, Function.WRITE, data)


def encode_address_reply(address: str, meter_type: int, *, seq: int, order: DiOrder) -> bytes:
    """A meter's reply to read-address (83): its address in the header, DI 810A and SER in the data."""
    return _reply(address, meter_type, Function.READ_ADDRESS, _di_bytes(DataId.READ_ADDRESS, order) + _seq(seq))


def encode_error_reply(address: str, meter_type: int, function: int, *, seq: int, order: DiOrder, status: int) -> bytes:
    """A meter's error reply (C0 | function): SER and ST.

    `order` is taken so that every reply builder has the same shape; the standard's error reply carries no DI.
    """
    del order
    if not 0 <= function <= _FUNCTION_MASK:
        raise ValueEncodingError(f"function {function} is outside 00..3F")
    return _reply(address, meter_type, function, _seq(seq) + _status_bytes(status), error=True)
