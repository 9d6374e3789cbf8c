"""Building blocks shared by the field codecs: checksums, packed BCD, addresses and the frame cutter."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Context, Decimal
from typing import Generic, TypeVar

from shuidian_protocols.errors import FrameError, ProtocolError, ValueEncodingError


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


def address_bytes(address: str, digits: int) -> bytes:
    """A `digits`-long hexadecimal address as frame bytes, least significant byte first."""
    if len(address) != digits:
        raise ValueEncodingError(f"address {address!r} is not {digits} digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError as err:
        raise ValueEncodingError(f"address {address!r} is not hexadecimal") from err


def target_address(address: str, digits: int) -> str:
    """A request's target: `digits` decimal digits, with A as the wildcard digit; returned upper-case."""
    normalised = address.upper()
    if len(normalised) != digits or any(c not in "0123456789A" for c in normalised):
        raise ValueEncodingError(f"meter address {address!r} must be {digits} decimal digits or A wildcards")
    return normalised


FrameT = TypeVar("FrameT")
FRAME_START = 0x68


class FrameCutter(Generic[FrameT]):
    """Cut `68 … L … CS 16` frames out of bytes that arrive in arbitrary chunks (DL/T 645, CJ/T 188).

    Every 68 is a candidate start; a protocol with a second 68 in its header (`confirm_at`) skips a
    lone 68 in line noise without counting it. Bad candidates are counted in `rejected`, never raised,
    and the search resumes one byte further on, since the real frame may start inside a rejected span.
    """

    def __init__(
        self,
        parse: Callable[[bytes], FrameT],
        *,
        header: int,
        length_at: int,
        max_length: int,
        confirm_at: int | None = None,
    ) -> None:
        self._parse = parse
        self._header = header
        self._length_at = length_at
        self._overhead = header + 2  # CS and 16 after the data
        self._max_length = max_length
        self._confirm_at = confirm_at
        self._buffer = bytearray()
        self.rejected = 0
        self.last_error: ProtocolError | None = None

    def _reject(self, error: ProtocolError) -> None:
        self.rejected += 1
        self.last_error = error

    def _candidate(self, position: int) -> bool:
        return self._confirm_at is None or self._buffer[position + self._confirm_at] == FRAME_START

    def _valid_frame_after(self, start: int) -> bool:
        """Whether a complete, valid frame starts at some 68 at or after `start`."""
        buf = self._buffer
        position = buf.find(FRAME_START, start)
        while position >= 0 and len(buf) - position >= self._header:
            length = buf[position + self._length_at]
            end = position + self._overhead + length
            if self._candidate(position) and length <= self._max_length and end <= len(buf):
                try:
                    self._parse(bytes(buf[position:end]))
                except ProtocolError:
                    pass
                else:
                    return True
            position = buf.find(FRAME_START, position + 1)
        return False

    def feed(self, chunk: bytes) -> list[FrameT]:
        """Add received bytes; return the complete valid frames they finish, in order."""
        buf = self._buffer
        buf += chunk
        frames: list[FrameT] = []
        position = 0
        while True:
            position = buf.find(FRAME_START, position)
            if position < 0:
                position = len(buf)  # FE preambles and line noise carry nothing
                break
            if len(buf) - position < self._header:
                break
            if not self._candidate(position):
                position += 1
                continue
            length = buf[position + self._length_at]
            if length > self._max_length:
                self._reject(FrameError(f"data length {length} exceeds {self._max_length}"))
                position += 1
                continue
            end = position + self._overhead + length
            if end > len(buf):
                # A false start whose length runs past the buffer would otherwise hold back a good frame
                # that is already complete behind it until more bytes happen to arrive.
                if self._valid_frame_after(position + 1):
                    self._reject(FrameError("incomplete frame overtaken by a complete one"))
                    position += 1
                    continue
                break
            try:
                frames.append(self._parse(bytes(buf[position:end])))
            except ProtocolError as err:
                self._reject(err)
                position += 1
                continue
            position = end
        del buf[:position]
        return frames
