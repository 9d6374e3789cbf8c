"""Building blocks shared by the field codecs: the error tree, checksums and packed BCD.

Exception tree (every codec raises only these)::

    ProtocolError            anything wrong with bytes from or for the field
    ├── FrameError           a frame that cannot be a valid frame (length, start/end byte, layout)
    │   └── ChecksumError    a well-formed frame whose checksum does not match
    ├── ValueEncodingError   a field whose content is not valid (non-BCD nibble, value out of range)
    └── DeviceError          the device answered with an error reply (carries the decoded reason)
"""

from __future__ import annotations

from decimal import Context, Decimal


class ProtocolError(Exception):
    """Root of every codec error."""


class FrameError(ProtocolError):
    """The bytes are not a valid frame."""


class ChecksumError(FrameError):
    """The frame's checksum byte does not match its content."""


class ValueEncodingError(ProtocolError):
    """A value cannot be encoded or decoded (not BCD, out of range, wrong size)."""


class DeviceError(ProtocolError):
    """The device answered with an error reply."""


def checksum(data: bytes) -> int:
    """Modulo-256 sum used by DL/T 645 and CJ/T 188."""
    return sum(data) & 0xFF


def bcd_decode(data: bytes) -> int:
    """Decode packed BCD, least significant byte first, into a non-negative integer."""
    value = 0
    for byte in reversed(data):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise ValueEncodingError(f"not BCD: {data.hex(' ')}")
        value = value * 100 + hi * 10 + lo
    return value


def bcd_encode(value: int, size: int) -> bytes:
    """Encode a non-negative integer as `size` bytes of packed BCD, least significant byte first."""
    if value < 0 or value >= 100**size:
        raise ValueEncodingError(f"{value} does not fit in {size} BCD bytes")
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def decimal_from_bcd(data: bytes, decimals: int, *, signed: bool = False) -> Decimal:
    """Decode BCD with an implied decimal point; when `signed`, bit 7 of the top byte is the sign."""
    negative = False
    if signed and data and data[-1] & 0x80:
        negative = True
        data = data[:-1] + bytes([data[-1] & 0x7F])
    magnitude = Decimal(bcd_decode(data)).scaleb(-decimals)
    return -magnitude if negative else magnitude


def bcd_from_decimal(value: Decimal, size: int, decimals: int, *, signed: bool = False) -> bytes:
    """Encode a Decimal with an implied decimal point; exact values only (no silent rounding)."""
    if not value.is_finite():
        raise ValueEncodingError(f"{value} is not a finite number")
    scaled = value.scaleb(decimals, Context(prec=60))
    if scaled != scaled.to_integral_value():
        raise ValueEncodingError(f"{value} has more than {decimals} decimals")
    integer = int(scaled)
    if integer < 0 and not signed:
        raise ValueEncodingError(f"{value} is negative in an unsigned field")
    raw = bytearray(bcd_encode(abs(integer), size))
    if integer < 0:
        if raw[-1] & 0x80:
            raise ValueEncodingError(f"{value} does not fit in {size} signed BCD bytes")
        raw[-1] |= 0x80
    elif signed and raw[-1] & 0x80:
        raise ValueEncodingError(f"{value} does not fit in {size} signed BCD bytes")
    return bytes(raw)
