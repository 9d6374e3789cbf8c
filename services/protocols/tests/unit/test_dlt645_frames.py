"""DL/T 645-2007 frames: the worked frames of PROTOCOLS.md byte for byte, envelope rules and the stream parser."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from shuidian_protocols.dlt645 import (
    BroadcastTime,
    ErrorBits,
    Frame,
    Function,
    MeterErrorReply,
    ReadAddressRequest,
    ReadFollowupRequest,
    ReadRequest,
    RelayCommand,
    RelayControlRequest,
    StreamParser,
    WriteRequest,
    addressed_to,
    broadcast_time_request,
    decode_frame,
    decode_request,
    decode_value,
    encode_ack,
    encode_address_reply,
    encode_error_reply,
    encode_frame,
    encode_read_followup_reply,
    encode_read_reply,
    encode_value,
    parse_ack,
    parse_address_reply,
    parse_read_followup_reply,
    parse_read_reply,
    read_address_request,
    read_followup_request,
    read_request,
    relay_control_request,
    write_request,
)
from shuidian_protocols.errors import ChecksumError, DeviceError, FrameError, ValueEncodingError

METER = "123456789012"


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


# The worked frames of PROTOCOLS.md, copied verbatim.
READ_VOLTAGE = hx("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 34 34 35 6B 16")
REPLY_VOLTAGE = hx("FE FE FE FE 68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16")
READ_ENERGY = hx("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")
REPLY_ENERGY = hx("FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 16")
REPLY_MONEY = hx("FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 35 C3 33 33 83 33 33 99 16")
REPLY_NO_DATA = hx("FE FE FE FE 68 12 90 78 56 34 12 68 D1 01 35 8D 16")
TRIP = hx("FE FE FE FE 68 12 90 78 56 34 12 68 1C 10 35 33 33 33 33 33 33 33 4D 33 8C 8C 56 64 45 59 3C 16")
TRIP_ACCEPTED = hx("FE FE FE FE 68 12 90 78 56 34 12 68 9C 00 22 16")
BROADCAST_TIME = hx("FE FE FE FE 68 99 99 99 99 99 99 68 08 06 33 63 45 58 44 59 44 16")
READ_ADDRESS = hx("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")

TRIP_EXPIRY = datetime(2026, 12, 31, 23, 59, 59)  # noqa: DTZ001 - meter-local wall clock


# ---------------------------------------------------------------- worked frames, master side


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (read_request(METER, 0x02010100), READ_VOLTAGE),
        (read_request(METER, 0x00010000), READ_ENERGY),
        (relay_control_request(METER, RelayCommand.TRIP, TRIP_EXPIRY), TRIP),
        (broadcast_time_request(datetime(2026, 11, 25, 12, 30, 0)), BROADCAST_TIME),  # noqa: DTZ001
        (read_address_request(), READ_ADDRESS),
    ],
    ids=["read-voltage", "read-energy", "trip", "broadcast-time", "read-address"],
)
def test_requests_match_worked_frames(built: bytes, expected: bytes) -> None:
    assert built.hex(" ") == expected.hex(" ")


@pytest.mark.parametrize(
    ("raw", "di", "value"),
    [
        (REPLY_VOLTAGE, 0x02010100, Decimal("220.1")),
        (REPLY_ENERGY, 0x00010000, Decimal("1234.56")),
        (REPLY_MONEY, 0x00900200, Decimal("50.00")),
    ],
    ids=["voltage", "energy", "money"],
)
def test_worked_replies_decode_to_their_values(raw: bytes, di: int, value: Decimal) -> None:
    frame = decode_frame(raw)
    assert frame.address == METER
    assert frame.function == Function.READ
    assert frame.is_reply
    assert not frame.is_error
    assert not frame.has_more
    decoded = decode_value(di, parse_read_reply(frame, di))
    assert decoded == value
    assert str(decoded) == str(value)  # the implied decimal point survives: 220.1, not 2201 or 220.10


def test_error_reply_decodes_to_no_data() -> None:
    with pytest.raises(MeterErrorReply) as caught:
        parse_read_reply(decode_frame(REPLY_NO_DATA), 0x02010100)
    assert caught.value.error == ErrorBits.NO_DATA
    assert caught.value.function == Function.READ
    assert isinstance(caught.value, DeviceError)


def test_trip_accepted_is_an_ack() -> None:
    frame = decode_frame(TRIP_ACCEPTED)
    assert frame.control == 0x9C
    assert frame.data == b""
    parse_ack(frame, Function.RELAY_CONTROL)


def test_trip_carries_its_expiry_and_credentials() -> None:
    # Decimal-looking BCD: 59 59 23 31 12 26 = ss mm hh DD MM YY after removing the offset.
    assert decode_frame(TRIP).data[-6:] == hx("59 59 23 31 12 26")
    later = relay_control_request(METER, RelayCommand.TRIP, TRIP_EXPIRY.replace(year=2027))
    assert later != TRIP


# ---------------------------------------------------------------- worked frames, slave side


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (READ_VOLTAGE, ReadRequest(METER, 0x02010100)),
        (READ_ENERGY, ReadRequest(METER, 0x00010000)),
        (TRIP, RelayControlRequest(METER, RelayCommand.TRIP, TRIP_EXPIRY, 2, 0, 0)),
        (BROADCAST_TIME, BroadcastTime("999999999999", datetime(2026, 11, 25, 12, 30))),  # noqa: DTZ001
        (READ_ADDRESS, ReadAddressRequest("AAAAAAAAAAAA")),
    ],
    ids=["read-voltage", "read-energy", "trip", "broadcast-time", "read-address"],
)
def test_worked_requests_decode_on_the_meter_side(raw: bytes, expected: object) -> None:
    assert decode_request(decode_frame(raw)) == expected


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (encode_read_reply(METER, 0x02010100, encode_value(0x02010100, Decimal("220.1"))), REPLY_VOLTAGE),
        (encode_read_reply(METER, 0x00010000, encode_value(0x00010000, Decimal("1234.56"))), REPLY_ENERGY),
        (encode_read_reply(METER, 0x00900200, encode_value(0x00900200, Decimal("50"))), REPLY_MONEY),
        (encode_error_reply(METER, Function.READ, ErrorBits.NO_DATA), REPLY_NO_DATA),
        (encode_ack(METER, Function.RELAY_CONTROL), TRIP_ACCEPTED),
    ],
    ids=["voltage", "energy", "money", "no-data", "trip-accepted"],
)
def test_meter_replies_match_worked_frames(built: bytes, expected: bytes) -> None:
    assert built.hex(" ") == expected.hex(" ")


# ---------------------------------------------------------------- envelope


def test_control_byte_bits() -> None:
    more = Frame(METER, 0xB1, b"")
    assert more.is_reply
    assert more.has_more
    assert not more.is_error
    assert more.function == Function.READ
    error = Frame(METER, 0xD1, b"\x02")
    assert error.is_reply
    assert error.is_error
    assert not error.has_more
    request = Frame(METER, 0x11, b"")
    assert not request.is_reply


@pytest.mark.parametrize("preamble", [0, 1, 2, 3, 4])
def test_preamble_of_zero_to_four_fe(preamble: int) -> None:
    frame = Frame(METER, 0x91, b"\x00\x01\x01\x02\x01\x22")
    raw = encode_frame(frame, preamble=preamble)
    assert raw[:preamble] == b"\xfe" * preamble
    assert raw[preamble] == 0x68
    assert decode_frame(raw) == frame


def test_five_fe_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_frame(b"\xfe" + READ_VOLTAGE)
    with pytest.raises(ValueEncodingError):
        encode_frame(Frame(METER, 0x11, b""), preamble=5)


def test_checksum_error_is_its_own_class() -> None:
    corrupt = bytearray(READ_VOLTAGE)
    corrupt[-2] ^= 0x01
    with pytest.raises(ChecksumError):
        decode_frame(bytes(corrupt))
    corrupt = bytearray(READ_VOLTAGE)
    corrupt[12] ^= 0x10  # a data byte: the sum no longer matches
    with pytest.raises(ChecksumError):
        decode_frame(bytes(corrupt))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        READ_VOLTAGE[:-1],  # truncated
        READ_VOLTAGE + b"\x00",  # trailing byte: decode_frame takes exactly one frame
        READ_VOLTAGE[:-1] + b"\x17",  # end byte
        READ_VOLTAGE.replace(b"\x68\x11", b"\x69\x11"),  # second start byte
        hx("68 12 90 78 56 34 12 68 91 C9") + bytes(201) + b"\x00\x16",  # L = 201 > 200
    ],
    ids=["empty", "truncated", "trailing", "end-byte", "second-68", "too-long"],
)
def test_malformed_frames_raise_frame_error(raw: bytes) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert not isinstance(caught.value, ChecksumError)


def test_frame_encoder_validates_its_input() -> None:
    with pytest.raises(ValueEncodingError):
        encode_frame(Frame("12345678901", 0x11, b""))
    with pytest.raises(ValueEncodingError):
        encode_frame(Frame("12345678901G", 0x11, b""))
    with pytest.raises(ValueEncodingError):
        encode_frame(Frame(METER, 0x100, b""))
    with pytest.raises(ValueEncodingError):
        encode_frame(Frame(METER, 0x91, bytes(201)))
    assert len(encode_frame(Frame(METER, 0x91, bytes(200)), preamble=0)) == 212


def test_request_addresses_are_decimal_or_wildcard() -> None:
    with pytest.raises(ValueEncodingError):
        read_request("12345678901B", 0x00010000)
    assert decode_frame(read_request("aaaaaaaaaaaa", 0x00010000)).address == "AAAAAAAAAAAA"
    assert decode_frame(read_request("1234567890AA", 0x00010000)).data[:4] == hx("00 00 01 00")


# ---------------------------------------------------------------- master-side parsing


def test_reply_for_another_di_is_refused() -> None:
    with pytest.raises(FrameError):
        parse_read_reply(decode_frame(REPLY_VOLTAGE), 0x02010200)


def test_request_is_not_a_reply() -> None:
    with pytest.raises(FrameError):
        parse_read_reply(decode_frame(READ_VOLTAGE), 0x02010100)
    with pytest.raises(FrameError):
        parse_ack(decode_frame(read_request(METER, 0x00010000)), Function.READ)


def test_short_reply_is_refused() -> None:
    with pytest.raises(FrameError):
        parse_read_reply(Frame(METER, 0x91, b"\x00\x01"), 0x00010000)


@pytest.mark.parametrize(
    ("byte", "bits"),
    [
        (0x01, ErrorBits.OTHER),
        (0x02, ErrorBits.NO_DATA),
        (0x04, ErrorBits.UNAUTHORISED),
        (0x08, ErrorBits.BAUD_UNCHANGEABLE),
        (0x10, ErrorBits.YEAR_ZONES),
        (0x20, ErrorBits.DAY_SLOTS),
        (0x40, ErrorBits.TARIFF_COUNT),
        (0x06, ErrorBits.NO_DATA | ErrorBits.UNAUTHORISED),
    ],
)
def test_error_byte_decodes_into_named_bits(byte: int, bits: ErrorBits) -> None:
    frame = decode_frame(encode_error_reply(METER, Function.RELAY_CONTROL, ErrorBits(byte)))
    assert frame.control == 0xDC
    with pytest.raises(MeterErrorReply) as caught:
        parse_ack(frame, Function.RELAY_CONTROL)
    assert caught.value.error == bits


def test_unauthorised_write_is_reported() -> None:
    frame = decode_frame(encode_error_reply(METER, Function.WRITE, ErrorBits.UNAUTHORISED))
    with pytest.raises(MeterErrorReply) as caught:
        parse_ack(frame, Function.WRITE)
    assert ErrorBits.UNAUTHORISED in caught.value.error
    assert ErrorBits.NO_DATA not in caught.value.error


def test_ack_for_another_function_or_with_data_is_refused() -> None:
    with pytest.raises(FrameError):
        parse_ack(decode_frame(TRIP_ACCEPTED), Function.WRITE)
    with pytest.raises(FrameError):
        parse_ack(Frame(METER, 0x9C, b"\x00"), Function.RELAY_CONTROL)
    parse_ack(Frame(METER, 0x97, b"\x08"), Function.CHANGE_BAUD)  # the baud reply echoes its word


def test_follow_up_read() -> None:
    request = read_followup_request(METER, 0x0001FF00, 1)
    assert decode_frame(request).control == 0x12
    assert decode_request(decode_frame(request)) == ReadFollowupRequest(METER, 0x0001FF00, 1)
    reply = decode_frame(encode_read_followup_reply(METER, 0x0001FF00, b"\x01\x02", 1, more=True))
    assert reply.control == 0xB2
    assert reply.has_more
    assert parse_read_followup_reply(reply, 0x0001FF00, 1) == b"\x01\x02"
    with pytest.raises(FrameError):
        parse_read_followup_reply(reply, 0x0001FF00, 2)


def test_first_reply_of_several_sets_more() -> None:
    frame = decode_frame(encode_read_reply(METER, 0x0001FF00, b"\x00" * 4, more=True))
    assert frame.control == 0xB1
    assert frame.has_more
    assert parse_read_reply(frame, 0x0001FF00) == b"\x00" * 4


def test_address_reply() -> None:
    frame = decode_frame(encode_address_reply(METER))
    assert frame.control == 0x93
    assert parse_address_reply(frame) == METER
    with pytest.raises(FrameError):
        parse_address_reply(Frame(METER, 0x93, b"\x12"))


# ---------------------------------------------------------------- writes and relay control


def test_write_request_layout_and_round_trip() -> None:
    payload = encode_value(0x04001001, Decimal("20.00"))
    raw = write_request(METER, 0x04001001, payload, password_level=4, password=123456, operator=87654321)
    frame = decode_frame(raw)
    assert frame.control == 0x14
    assert frame.data == hx("01 10 00 04") + hx("04 56 34 12") + hx("21 43 65 87") + payload
    assert decode_request(frame) == WriteRequest(METER, 0x04001001, payload, 4, 123456, 87654321)


def test_write_is_limited_to_fifty_data_bytes() -> None:
    write_request(METER, 0x04000101, bytes(38))
    with pytest.raises(ValueEncodingError):
        write_request(METER, 0x04000101, bytes(39))


@pytest.mark.parametrize(
    ("kwargs", "expires_at"),
    [
        ({"password": 1_000_000}, TRIP_EXPIRY),
        ({"operator": 100_000_000}, TRIP_EXPIRY),
        ({"password_level": 100}, TRIP_EXPIRY),
        ({"password": -1}, TRIP_EXPIRY),
        ({}, datetime(2100, 1, 1)),  # noqa: DTZ001
        ({}, datetime(1999, 12, 31)),  # noqa: DTZ001
    ],
)
def test_relay_fields_out_of_range(kwargs: dict[str, int], expires_at: datetime) -> None:
    with pytest.raises(ValueEncodingError):
        relay_control_request(METER, RelayCommand.TRIP, expires_at, **kwargs)


def test_relay_expiry_must_be_naive_local_time() -> None:
    from datetime import UTC

    with pytest.raises(ValueEncodingError):
        relay_control_request(METER, RelayCommand.TRIP, TRIP_EXPIRY.replace(tzinfo=UTC))


def test_relay_command_codes() -> None:
    assert [command.value for command in RelayCommand] == [0x1A, 0x1B, 0x1C, 0x2A, 0x2B, 0x3A, 0x3B]
    raw = relay_control_request(METER, RelayCommand.KEEP_POWER_ON, TRIP_EXPIRY, password=1, operator=2)
    request = decode_request(decode_frame(raw))
    assert isinstance(request, RelayControlRequest)
    assert request.command is RelayCommand.KEEP_POWER_ON
    assert (request.password, request.operator) == (1, 2)


def test_unknown_relay_command_and_bad_expiry_on_the_meter_side() -> None:
    data = bytearray(decode_frame(TRIP).data)
    data[8] = 0x99
    with pytest.raises(ValueEncodingError):
        decode_request(Frame(METER, 0x1C, bytes(data)))
    data = bytearray(decode_frame(TRIP).data)
    data[14] = 0x13  # month 13
    with pytest.raises(ValueEncodingError):
        decode_request(Frame(METER, 0x1C, bytes(data)))
    data[14] = 0x1A  # not BCD
    with pytest.raises(ValueEncodingError):
        decode_request(Frame(METER, 0x1C, bytes(data)))


def test_meter_side_refuses_replies_short_requests_and_unsupported_functions() -> None:
    with pytest.raises(FrameError):
        decode_request(decode_frame(REPLY_VOLTAGE))
    with pytest.raises(FrameError):
        decode_request(Frame(METER, 0x11, b"\x00\x01"))
    with pytest.raises(FrameError):
        decode_request(Frame(METER, 0x1C, bytes(15)))
    with pytest.raises(FrameError):
        decode_request(Frame(METER, Function.CLEAR_METER, bytes(8)))


def test_addressed_to() -> None:
    assert addressed_to(Frame(METER, 0x11, b""), METER)
    assert not addressed_to(Frame("123456789013", 0x11, b""), METER)
    assert addressed_to(Frame("AAAAAAAAAAAA", 0x13, b""), METER)
    assert addressed_to(Frame("1234567890AA", 0x11, b""), METER)
    assert not addressed_to(Frame("AAAAAAAAAA13", 0x11, b""), METER)
    assert addressed_to(Frame("999999999999", 0x08, b""), METER)


# ---------------------------------------------------------------- stream parser


def test_parser_reassembles_byte_by_byte() -> None:
    parser = StreamParser()
    frames = [frame for byte in REPLY_VOLTAGE + REPLY_ENERGY for frame in parser.feed(bytes([byte]))]
    assert frames == [decode_frame(REPLY_VOLTAGE), decode_frame(REPLY_ENERGY)]
    assert parser.rejected == 0
    assert parser.last_error is None


def test_parser_skips_garbage_and_counts_bad_candidates() -> None:
    corrupt = bytearray(REPLY_ENERGY)
    corrupt[-2] ^= 0xFF
    parser = StreamParser()
    frames = parser.feed(b"\x00\x16\x68 noise" + bytes(corrupt) + b"\xfe\xfe" + REPLY_VOLTAGE)
    assert frames == [decode_frame(REPLY_VOLTAGE)]
    assert parser.rejected == 1
    assert isinstance(parser.last_error, ChecksumError)


def test_parser_counts_bad_end_byte_and_bad_length() -> None:
    parser = StreamParser()
    assert parser.feed(READ_VOLTAGE[:-1] + b"\x00") == []
    assert parser.rejected == 1
    assert type(parser.last_error) is FrameError
    assert parser.feed(hx("68 00 00 00 00 00 00 68 91 FF")) == []
    assert parser.rejected == 2
    assert "length" in str(parser.last_error)


def test_false_start_does_not_hold_back_a_complete_frame() -> None:
    # 68 … 68 with L = 0xC8 promises 200 data bytes that never come; the real reply behind it must not wait.
    parser = StreamParser()
    assert parser.feed(hx("68 01 02 03 04 05 06 68 91 C8 00 00") + REPLY_MONEY) == [decode_frame(REPLY_MONEY)]
    assert parser.rejected == 1


def test_parser_waits_for_an_incomplete_frame() -> None:
    parser = StreamParser()
    assert parser.feed(REPLY_MONEY[:-3]) == []
    assert parser.feed(REPLY_MONEY[-3:]) == [decode_frame(REPLY_MONEY)]
    assert parser.rejected == 0
