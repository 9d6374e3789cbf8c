"""Property tests for the DL/T 645 codec: value and command round trips, and a parser that survives any line."""

from __future__ import annotations

import contextlib
from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_protocols.dlt645 import (
    CATALOGUE,
    MAX_DATA_LENGTH,
    DataItem,
    Frame,
    MeterType,
    RelayCommand,
    RelayControlRequest,
    StatusWord1,
    StatusWord3,
    StreamParser,
    Value,
    ValueKind,
    WriteRequest,
    decode_frame,
    decode_request,
    decode_value,
    encode_frame,
    encode_value,
    relay_control_request,
    write_request,
)
from shuidian_protocols.errors import ProtocolError, ValueEncodingError

meter_addresses = st.text("0123456789", min_size=12, max_size=12)
any_addresses = st.binary(min_size=6, max_size=6).map(lambda b: b.hex().upper())
frames = st.builds(Frame, any_addresses, st.integers(0, 0xFF), st.binary(max_size=MAX_DATA_LENGTH))
# Uniform random bytes rarely look like a frame, so line noise also mixes in the bytes that matter (68, 16,
# FE), false starts `68 A 68 C L` with any length, and frames cut short.
false_starts = st.builds(
    lambda address, control, length, rest: b"\x68" + address + b"\x68" + bytes([control, length]) + rest,
    st.binary(min_size=6, max_size=6),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.binary(max_size=8),
)
truncated_frames = st.tuples(frames, st.integers(1, 24)).map(lambda pair: encode_frame(pair[0])[: -pair[1]])
fragments = st.one_of(
    st.binary(max_size=16),
    st.sampled_from([b"\x68", b"\x16", b"\xfe", b"\xfe\xfe\xfe\xfe"]),
    false_starts,
    truncated_frames,
)
line_noise = st.binary(max_size=80) | st.lists(fragments, max_size=6).map(b"".join)
local_times = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59)).map(  # noqa: DTZ001
    lambda at: at.replace(microsecond=0)
)


def _decimals(item: DataItem, size: int) -> st.SearchStrategy[Decimal]:
    digits = 2 * size
    # In a signed field bit 7 of the top byte is the sign, so its top digit stops at 7.
    top = 8 * 10 ** (digits - 1) - 1 if item.signed else 10**digits - 1
    return st.integers(-top if item.signed else 0, top).map(lambda n: Decimal(n).scaleb(-item.decimals))


def values_for(item: DataItem) -> st.SearchStrategy[Value]:
    flags = st.booleans()
    words = st.integers(0, 0xFFFF)
    match item.kind:
        case ValueKind.DECIMAL:
            return _decimals(item, item.size)
        case ValueKind.BLOCK:
            return st.tuples(*[_decimals(item, item.element_size)] * item.elements)
        case ValueKind.COUNT:
            return st.integers(0, 10 ** (2 * item.size) - 1)
        case ValueKind.DATE:
            return st.dates(date(2000, 1, 1), date(2099, 12, 31))
        case ValueKind.TIME:
            return st.times().map(lambda t: t.replace(microsecond=0))
        case ValueKind.STATUS_WORD_1:
            return st.builds(StatusWord1, flags, flags, flags, words)
        case ValueKind.STATUS_WORD_3:
            return st.builds(StatusWord3, flags, flags, flags, st.sampled_from(MeterType), flags, words)


@pytest.mark.parametrize("di", sorted(CATALOGUE), ids=lambda di: f"{di:08X}")
@given(data=st.data())
def test_value_round_trip(di: int, data: st.DataObject) -> None:
    item = CATALOGUE[di]
    value = data.draw(values_for(item))
    payload = encode_value(di, value)
    assert len(payload) == item.size
    assert decode_value(di, payload) == value


@pytest.mark.parametrize("di", sorted(CATALOGUE), ids=lambda di: f"{di:08X}")
@given(data=st.data())
def test_payload_round_trip_or_value_error(di: int, data: st.DataObject) -> None:
    item = CATALOGUE[di]
    payload = data.draw(st.binary(min_size=item.size, max_size=item.size) | st.binary(max_size=12))
    try:
        value = decode_value(di, payload)
    except ValueEncodingError:
        return
    # Three encodings are many-to-one: a date's weekday byte is not checked on the way in, a signed zero may
    # carry the sign bit, and a block holds several of those signed fields.
    negative_zero = item.signed and payload[-1] & 0x80 and value == 0
    if item.kind not in (ValueKind.DATE, ValueKind.BLOCK) and not negative_zero:
        assert encode_value(di, value) == payload


@given(
    address=meter_addresses,
    command=st.sampled_from(RelayCommand),
    expires_at=local_times,
    level=st.integers(0, 99),
    password=st.integers(0, 999_999),
    operator=st.integers(0, 99_999_999),
)
def test_relay_control_round_trip(
    address: str, command: RelayCommand, expires_at: datetime, level: int, password: int, operator: int
) -> None:
    raw = relay_control_request(
        address, command, expires_at, password_level=level, password=password, operator=operator
    )
    assert len(raw) == 4 + 12 + 16
    request = decode_request(decode_frame(raw))
    assert request == RelayControlRequest(address, command, expires_at, level, password, operator)


@given(
    address=meter_addresses,
    di=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=38),
    level=st.integers(0, 99),
    password=st.integers(0, 999_999),
    operator=st.integers(0, 99_999_999),
)
def test_write_round_trip(address: str, di: int, payload: bytes, level: int, password: int, operator: int) -> None:
    raw = write_request(address, di, payload, password_level=level, password=password, operator=operator)
    assert decode_request(decode_frame(raw)) == WriteRequest(address, di, payload, level, password, operator)


@given(frame=frames, preamble=st.integers(0, 4))
def test_frame_round_trip(frame: Frame, preamble: int) -> None:
    assert decode_frame(encode_frame(frame, preamble=preamble)) == frame


@given(raw=st.binary(max_size=300) | st.binary(max_size=220).map(lambda b: b"\xfe\xfe\x68" + b[:6] + b"\x68" + b[6:]))
def test_decode_frame_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except ProtocolError:
        return
    assert encode_frame(frame, preamble=0) in raw


@given(frame=frames)
def test_decode_request_raises_only_protocol_errors(frame: Frame) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(frame)


def _feed(parser: StreamParser, stream: bytes, cuts: list[int]) -> list[Frame]:
    out: list[Frame] = []
    previous = 0
    for cut in [*sorted(cuts), len(stream)]:
        out += parser.feed(stream[previous:cut])
        previous = cut
    return out


def _is_subsequence(needles: list[Frame], haystack: list[Frame]) -> bool:
    remaining = iter(haystack)
    return all(any(found == needle for found in remaining) for needle in needles)


@given(chunks=st.lists(line_noise, max_size=20))
def test_parser_survives_random_bytes(chunks: list[bytes]) -> None:
    parser = StreamParser()
    stream = b"".join(chunks)
    for chunk in chunks:
        for frame in parser.feed(chunk):
            # Whatever it yields must sit in the input verbatim, checksum and all.
            assert encode_frame(frame, preamble=0) in stream


@given(sent=st.lists(frames, min_size=1, max_size=5), preamble=st.integers(0, 4), data=st.data())
def test_parser_reassembles_frames_split_anywhere(sent: list[Frame], preamble: int, data: st.DataObject) -> None:
    stream = b"".join(encode_frame(frame, preamble=preamble) for frame in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    parser = StreamParser()
    assert _feed(parser, stream, cuts) == sent
    assert parser.rejected == 0


@given(
    pieces=st.lists(st.tuples(line_noise, frames), min_size=1, max_size=5),
    tail=line_noise,
    data=st.data(),
)
def test_parser_recovers_frames_after_garbage(
    pieces: list[tuple[bytes, Frame]], tail: bytes, data: st.DataObject
) -> None:
    stream = b"".join(garbage + encode_frame(frame) for garbage, frame in pieces) + tail
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    parser = StreamParser()
    received = _feed(parser, stream, cuts)
    for frame in received:
        assert encode_frame(frame, preamble=0) in stream
    assert _is_subsequence([frame for _, frame in pieces], received)


@given(first=frames, second=frames, data=st.data())
def test_parser_rejects_single_byte_corruption(first: Frame, second: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(first))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 0xFF).filter(lambda b: b != raw[index]))
    stream = bytes(raw) + encode_frame(second)
    parser = StreamParser()
    received = _feed(parser, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    if index < 4:
        # Only a wake-up byte was hit: the frame itself is intact.
        assert received == [first, second]
    else:
        assert received == [second]
