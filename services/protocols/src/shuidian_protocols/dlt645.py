"""DL/T 645-2007 (and the DL/T 645-1997 read subset) frame codec for electricity meters: bytes in, values out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag

from shuidian_protocols.common import FrameCutter, address_bytes, bcd_decode, bcd_encode, checksum, target_address
from shuidian_protocols.dlt645_catalogue import (
    CATALOGUE,
    CATALOGUE_1997,
    DataItem,
    MeterType,
    StatusWord1,
    StatusWord3,
    Value,
    ValueKind,
    decode_value,
    decode_value_1997,
    encode_value,
    encode_value_1997,
)
from shuidian_protocols.errors import ChecksumError, DeviceError, FrameError, ValueEncodingError

__all__ = [
    "BROADCAST_ADDRESS",
    "CATALOGUE",
    "CATALOGUE_1997",
    "MAX_DATA_LENGTH",
    "MAX_WRITE_LENGTH",
    "WILDCARD_ADDRESS",
    "BroadcastTime",
    "DataItem",
    "ErrorBits",
    "Frame",
    "Function",
    "MeterErrorReply",
    "MeterType",
    "ReadAddressRequest",
    "ReadFollowupRequest",
    "ReadRequest",
    "ReadRequest1997",
    "RelayCommand",
    "RelayControlRequest",
    "Request",
    "StatusWord1",
    "StatusWord3",
    "StreamParser",
    "Value",
    "ValueKind",
    "WriteRequest",
    "addressed_to",
    "broadcast_time_request",
    "decode_frame",
    "decode_request",
    "decode_request_1997",
    "decode_value",
    "decode_value_1997",
    "encode_ack",
    "encode_address_reply",
    "encode_error_reply",
    "encode_error_reply_1997",
    "encode_frame",
    "encode_read_followup_reply",
    "encode_read_reply",
    "encode_read_reply_1997",
    "encode_value",
    "encode_value_1997",
    "parse_ack",
    "parse_address_reply",
    "parse_read_followup_reply",
    "parse_read_reply",
    "parse_read_reply_1997",
    "read_address_request",
    "read_followup_request",
    "read_request",
    "read_request_1997",
    "relay_control_request",
    "write_request",
]

BROADCAST_ADDRESS = "999999999999"
WILDCARD_ADDRESS = "AAAAAAAAAAAA"
MAX_DATA_LENGTH = 200  # the standard caps L at 200 (reads); anything longer is line noise
MAX_WRITE_LENGTH = 50  # ... and at 50 for writes

_START = 0x68
_END = 0x16
_PREAMBLE = 0xFE
_OFFSET = 0x33
_HEADER = 10  # 68 A0..A5 68 C L
_OVERHEAD = 12  # header + CS + 16
_ADDRESS_DIGITS = 12
_MAX_PREAMBLE = 4

_REPLY = 0x80
_ERROR = 0x40
_MORE = 0x20
_FUNCTION_MASK = 0x1F

_READ_1997 = 0x01


class Function(IntEnum):
    """Function code: the low five bits of the control byte."""

    SECURITY_AUTH = 0x03
    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOWUP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    RELAY_CONTROL = 0x1C


class ErrorBits(IntFlag):
    """The error byte of an error reply (C with bit 6 set)."""

    OTHER = 0x01
    NO_DATA = 0x02
    UNAUTHORISED = 0x04
    BAUD_UNCHANGEABLE = 0x08
    YEAR_ZONES = 0x10
    DAY_SLOTS = 0x20
    TARIFF_COUNT = 0x40


class RelayCommand(IntEnum):
    """N1 of a 1C relay-control command."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    DIRECT_CLOSE = 0x1C
    ALARM_ON = 0x2A
    ALARM_OFF = 0x2B
    KEEP_POWER_ON = 0x3A
    KEEP_POWER_OFF = 0x3B


class MeterErrorReply(DeviceError):
    """The meter answered with an error reply; `error` holds the decoded error byte."""

    def __init__(self, function: int, error: ErrorBits) -> None:
        super().__init__(f"meter refused function {function:02X}: {error!r}")
        self.function = function
        self.error = error


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645 frame; `data` has the +0x33 offset removed and `address` reads most significant digit first."""

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

    @property
    def has_more(self) -> bool:
        return bool(self.control & _MORE)


# ---------------------------------------------------------------- envelope


def encode_frame(frame: Frame, *, preamble: int = 4) -> bytes:
    """Serialise a frame, adding the +0x33 offset, checksum, end byte and `preamble` wake-up FE bytes."""
    if not 0 <= preamble <= _MAX_PREAMBLE:
        raise ValueEncodingError(f"preamble of {preamble} FE bytes is outside 0..4")
    if not 0 <= frame.control <= 0xFF:
        raise ValueEncodingError(f"control byte {frame.control} out of range")
    if len(frame.data) > MAX_DATA_LENGTH:
        raise ValueEncodingError(f"{len(frame.data)} data bytes exceed {MAX_DATA_LENGTH}")
    body = (
        bytes([_START])
        + address_bytes(frame.address, _ADDRESS_DIGITS)
        + bytes([_START, frame.control, len(frame.data)])
        + bytes((b + _OFFSET) & 0xFF for b in frame.data)
    )
    return bytes([_PREAMBLE]) * preamble + body + bytes([checksum(body), _END])


def _parse(raw: bytes) -> Frame:
    """Parse exactly one frame that starts at its first 68 (no preamble)."""
    if len(raw) < _OVERHEAD:
        raise FrameError(f"{len(raw)} bytes are too short for a frame")
    if raw[0] != _START or raw[7] != _START:
        raise FrameError("missing 68 start byte")
    length = raw[9]
    if length > MAX_DATA_LENGTH:
        raise FrameError(f"data length {length} exceeds {MAX_DATA_LENGTH}")
    if len(raw) != _OVERHEAD + length:
        raise FrameError(f"data length {length} does not match {len(raw)} frame bytes")
    if raw[-1] != _END:
        raise FrameError(f"end byte {raw[-1]:02X} is not 16")
    if checksum(raw[:-2]) != raw[-2]:
        raise ChecksumError(f"checksum {raw[-2]:02X} should be {checksum(raw[:-2]):02X}")
    return Frame(
        address=raw[6:0:-1].hex().upper(),
        control=raw[8],
        data=bytes((b - _OFFSET) & 0xFF for b in raw[_HEADER:-2]),
    )


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame, optionally preceded by up to four FE bytes."""
    raw = bytes(raw)
    body = raw.lstrip(bytes([_PREAMBLE]))
    if len(raw) - len(body) > _MAX_PREAMBLE:
        raise FrameError(f"{len(raw) - len(body)} FE bytes before the frame, at most 4 allowed")
    return _parse(body)


class StreamParser(FrameCutter[Frame]):
    """Cut DL/T 645 frames out of a byte stream; bad candidates are counted, never raised."""

    def __init__(self) -> None:
        super().__init__(_parse, header=_HEADER, length_at=9, max_length=MAX_DATA_LENGTH, confirm_at=7)


# ---------------------------------------------------------------- field helpers


def _di_bytes(di: int, size: int = 4) -> bytes:
    if not 0 <= di < 1 << (8 * size):
        raise ValueEncodingError(f"DI {di:#x} does not fit {size} bytes")
    return di.to_bytes(size, "little")


def _datetime_bytes(at: datetime) -> bytes:
    if at.tzinfo is not None:
        raise ValueEncodingError("meter time is local wall-clock time: pass a naive datetime")
    if not 2000 <= at.year <= 2099:
        raise ValueEncodingError(f"year {at.year} is outside 2000..2099")
    # ss mm hh DD MM YY, whole seconds; microseconds are dropped.
    fields = (at.second, at.minute, at.hour, at.day, at.month, at.year - 2000)
    return bytes(bcd_encode(field, 1)[0] for field in fields)


def _datetime_from(data: bytes) -> datetime:
    second, minute, hour, day, month, year = (bcd_decode(data[i : i + 1]) for i in range(6))
    try:
        return datetime(2000 + year, month, day, hour, minute, second)  # noqa: DTZ001 - meter-local wall clock
    except ValueError as err:
        raise ValueEncodingError(f"not a date-time: {data.hex(' ')}") from err


def _credentials(password_level: int, password: int, operator: int) -> bytes:
    # Level, password and operator code are all BCD digits: level 02, password 123456, level 98 (encrypted).
    return bcd_encode(password_level, 1) + bcd_encode(password, 3) + bcd_encode(operator, 4)


def _credentials_from(data: bytes) -> tuple[int, int, int]:
    return bcd_decode(data[0:1]), bcd_decode(data[1:4]), bcd_decode(data[4:8])


def _request(address: str, function: int, data: bytes) -> bytes:
    return encode_frame(Frame(target_address(address, _ADDRESS_DIGITS), function, data))


def _reply(address: str, control: int, data: bytes) -> bytes:
    return encode_frame(Frame(target_address(address, _ADDRESS_DIGITS), control, data))


def addressed_to(frame: Frame, address: str) -> bool:
    """Whether a request should be handled by the meter at `address` (exact, broadcast or AA-byte wildcard)."""
    if frame.address == BROADCAST_ADDRESS:
        return True
    target = frame.address.upper()
    own = address.upper()
    return all(target[i : i + 2] in ("AA", own[i : i + 2]) for i in range(0, _ADDRESS_DIGITS, 2))


# ---------------------------------------------------------------- master side (collector)


def read_request(address: str, di: int) -> bytes:
    """Read one data identifier (function 11)."""
    return _request(address, Function.READ, _di_bytes(di))


def read_followup_request(address: str, di: int, seq: int) -> bytes:
    """Ask for follow-up frame `seq` of a reply that had the more-frames bit (function 12)."""
    if not 0 <= seq <= 0xFF:
        raise ValueEncodingError(f"sequence {seq} out of range")
    return _request(address, Function.READ_FOLLOWUP, _di_bytes(di) + bytes([seq]))


def read_address_request() -> bytes:
    """Read the address of the only meter on the bus (function 13 to AA…AA)."""
    return _request(WILDCARD_ADDRESS, Function.READ_ADDRESS, b"")


def write_request(
    address: str, di: int, payload: bytes, *, password_level: int = 2, password: int = 0, operator: int = 0
) -> bytes:
    """Write a data identifier (function 14)."""
    data = _di_bytes(di) + _credentials(password_level, password, operator) + payload
    if len(data) > MAX_WRITE_LENGTH:
        raise ValueEncodingError(f"write of {len(data)} data bytes exceeds {MAX_WRITE_LENGTH}")
    return _request(address, Function.WRITE, data)


def broadcast_time_request(at: datetime) -> bytes:
    """Set every meter's clock (function 08 to 99…99, no reply); `at` is naive meter-local time."""
    return _request(BROADCAST_ADDRESS, Function.BROADCAST_TIME, _datetime_bytes(at))


def relay_control_request(
    address: str,
    command: RelayCommand,
    expires_at: datetime,
    *,
    password_level: int = 2,
    password: int = 0,
    operator: int = 0,
) -> bytes:
    """Plaintext relay control (function 1C); the meter refuses the command after the naive local `expires_at`."""
    try:
        n1 = RelayCommand(command)
    except ValueError as err:
        raise ValueEncodingError(f"unknown relay command {command!r}") from err
    data = _credentials(password_level, password, operator) + bytes([n1, 0x00]) + _datetime_bytes(expires_at)
    return _request(address, Function.RELAY_CONTROL, data)


def _expect_reply(frame: Frame, function: int) -> None:
    if not frame.is_reply or frame.function != function:
        raise FrameError(f"control {frame.control:02X} is not a reply to function {function:02X}")
    if frame.is_error:
        raise MeterErrorReply(function, ErrorBits(frame.data[0] if frame.data else 0))


def _payload_after_di(frame: Frame, di: bytes) -> bytes:
    if frame.data[: len(di)] != di:
        raise FrameError(f"reply is for DI {frame.data[: len(di)][::-1].hex()}, not {di[::-1].hex()}")
    return frame.data[len(di) :]


def parse_read_reply(frame: Frame, di: int) -> bytes:
    """The payload of a read reply for `di`; check `frame.has_more` for follow-up frames."""
    _expect_reply(frame, Function.READ)
    return _payload_after_di(frame, _di_bytes(di))


def parse_read_followup_reply(frame: Frame, di: int, seq: int) -> bytes:
    """The payload of follow-up reply `seq` for `di` (DI, payload, then the echoed sequence byte)."""
    _expect_reply(frame, Function.READ_FOLLOWUP)
    payload = _payload_after_di(frame, _di_bytes(di))
    if not payload or payload[-1] != seq:
        raise FrameError(f"follow-up reply does not carry sequence {seq}")
    return payload[:-1]


# Normal replies to these functions carry data (new baud word, new password, auth result); the rest have L=0.
_ACK_WITH_DATA = frozenset({Function.CHANGE_BAUD, Function.CHANGE_PASSWORD, Function.SECURITY_AUTH})


def parse_ack(frame: Frame, function: Function) -> None:
    """Check a success reply to a command (write, relay control, …); raise MeterErrorReply if refused."""
    _expect_reply(frame, function)
    if frame.data and function not in _ACK_WITH_DATA:
        raise FrameError(f"success reply to function {function:02X} should carry no data")


def parse_address_reply(frame: Frame) -> str:
    """The meter address carried by a read-address reply."""
    _expect_reply(frame, Function.READ_ADDRESS)
    if len(frame.data) != 6:
        raise FrameError(f"address reply carries {len(frame.data)} bytes, not 6")
    return frame.data[::-1].hex().upper()


# ---------------------------------------------------------------- slave side (simulator)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    address: str
    di: int
    parameters: bytes = b""  # block count or load-profile time some reads append after the DI


@dataclass(frozen=True, slots=True)
class ReadFollowupRequest:
    address: str
    di: int
    seq: int


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    address: str


@dataclass(frozen=True, slots=True)
class WriteRequest:
    address: str
    di: int
    payload: bytes
    password_level: int
    password: int
    operator: int


@dataclass(frozen=True, slots=True)
class BroadcastTime:
    address: str
    at: datetime  # naive, meter-local


@dataclass(frozen=True, slots=True)
class RelayControlRequest:
    address: str
    command: RelayCommand
    expires_at: datetime  # naive, meter-local
    password_level: int
    password: int
    operator: int


Request = ReadRequest | ReadFollowupRequest | ReadAddressRequest | WriteRequest | BroadcastTime | RelayControlRequest


def _require_length(frame: Frame, minimum: int, exact: bool = True) -> None:
    if len(frame.data) < minimum or (exact and len(frame.data) != minimum):
        raise FrameError(f"function {frame.function:02X} request with {len(frame.data)} data bytes")


def decode_request(frame: Frame) -> Request:
    """Decode a request a master sent to a meter; unsupported functions raise FrameError."""
    if frame.is_reply:
        raise FrameError(f"control {frame.control:02X} is a reply, not a request")
    data = frame.data
    match frame.function:
        case Function.READ:
            _require_length(frame, 4, exact=False)
            return ReadRequest(frame.address, int.from_bytes(data[:4], "little"), data[4:])
        case Function.READ_FOLLOWUP:
            _require_length(frame, 5)
            return ReadFollowupRequest(frame.address, int.from_bytes(data[:4], "little"), data[4])
        case Function.READ_ADDRESS:
            _require_length(frame, 0)
            return ReadAddressRequest(frame.address)
        case Function.WRITE:
            _require_length(frame, 12, exact=False)
            level, password, operator = _credentials_from(data[4:12])
            return WriteRequest(frame.address, int.from_bytes(data[:4], "little"), data[12:], level, password, operator)
        case Function.BROADCAST_TIME:
            _require_length(frame, 6)
            return BroadcastTime(frame.address, _datetime_from(data))
        case Function.RELAY_CONTROL:
            _require_length(frame, 16)
            level, password, operator = _credentials_from(data[:8])
            try:
                command = RelayCommand(data[8])
            except ValueError as err:
                raise ValueEncodingError(f"unknown relay command {data[8]:02X}") from err
            return RelayControlRequest(frame.address, command, _datetime_from(data[10:16]), level, password, operator)
    raise FrameError(f"unsupported function {frame.function:02X}")


def encode_read_reply(address: str, di: int, payload: bytes, *, more: bool = False) -> bytes:
    """A meter's normal read reply (91, or B1 when follow-up frames remain)."""
    return _reply(address, _REPLY | (_MORE if more else 0) | Function.READ, _di_bytes(di) + payload)


def encode_read_followup_reply(address: str, di: int, payload: bytes, seq: int, *, more: bool = False) -> bytes:
    """A meter's follow-up reply (92, or B2 when more remain): DI, payload, echoed sequence."""
    if not 0 <= seq <= 0xFF:
        raise ValueEncodingError(f"sequence {seq} out of range")
    control = _REPLY | (_MORE if more else 0) | Function.READ_FOLLOWUP
    return _reply(address, control, _di_bytes(di) + payload + bytes([seq]))


def encode_error_reply(address: str, function: Function, error: ErrorBits) -> bytes:
    """A meter's error reply (C0 | function) carrying the error byte."""
    return _reply(address, _REPLY | _ERROR | function, bytes([error & 0xFF]))


def encode_ack(address: str, function: Function) -> bytes:
    """A meter's success reply with no data (94, 9C, …)."""
    return _reply(address, _REPLY | function, b"")


def encode_address_reply(address: str) -> bytes:
    """A meter's reply to read-address: its own address in both the header and the data."""
    return _reply(
        address,
        _REPLY | Function.READ_ADDRESS,
        address_bytes(target_address(address, _ADDRESS_DIGITS), _ADDRESS_DIGITS),
    )


# ---------------------------------------------------------------- DL/T 645-1997 read subset


@dataclass(frozen=True, slots=True)
class ReadRequest1997:
    address: str
    di: int


def read_request_1997(address: str, di: int) -> bytes:
    """Read a 2-byte DL/T 645-1997 data identifier (function 01)."""
    return _request(address, _READ_1997, _di_bytes(di, 2))


def parse_read_reply_1997(frame: Frame, di: int) -> bytes:
    """The payload of a 1997 read reply (81) for `di`; a C1 error reply raises MeterErrorReply."""
    # The 1997 error byte has the same low bits (b0 illegal data, b1 bad DI, b2 password), so ErrorBits fits.
    _expect_reply(frame, _READ_1997)
    return _payload_after_di(frame, _di_bytes(di, 2))


def decode_request_1997(frame: Frame) -> ReadRequest1997:
    """Decode a 1997 read request; other functions raise FrameError."""
    if frame.is_reply or frame.function != _READ_1997:
        raise FrameError(f"control {frame.control:02X} is not a 1997 read request")
    _require_length(frame, 2)
    return ReadRequest1997(frame.address, int.from_bytes(frame.data, "little"))


def encode_read_reply_1997(address: str, di: int, payload: bytes, *, more: bool = False) -> bytes:
    """A 1997 meter's read reply (81, or A1 when more follows)."""
    return _reply(address, _REPLY | (_MORE if more else 0) | _READ_1997, _di_bytes(di, 2) + payload)


def encode_error_reply_1997(address: str, error: ErrorBits) -> bytes:
    """A 1997 meter's error reply (C1)."""
    return _reply(address, _REPLY | _ERROR | _READ_1997, bytes([error & 0xFF]))
