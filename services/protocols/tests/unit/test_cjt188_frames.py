"""CJ/T 188 codec against the worked frames of PROTOCOLS.md and hand-checked vectors, both DI orders."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal

import pytest

from shuidian_protocols.cjt188 import (
    WILDCARD_ADDRESS,
    CurrentData,
    DataId,
    DiOrder,
    Frame,
    Function,
    MeterErrorReply,
    MeterStatus,
    MeterType,
    ReadAddressRequest,
    ReadRequest,
    StatusLayout,
    StreamParser,
    Unit,
    ValveRequest,
    ValveState,
    addressed_to,
    decode_frame,
    decode_request,
    decode_status,
    encode_address_reply,
    encode_current_data_reply,
    encode_error_reply,
    encode_frame,
    encode_valve_ack,
    parse_address_reply,
    parse_current_data,
    parse_valve_ack,
    read_address_request,
    read_request,
    valve_request,
)
from shuidian_protocols.errors import ChecksumError, DeviceError, FrameError, ValueEncodingError

METER = "00000012345678"

# PROTOCOLS.md, CJ/T 188 worked frames.
UNIVERSAL_READ_2004 = bytes.fromhex("FE FE 68 10 AA AA AA AA AA AA AA 01 03 90 1F 01 D2 16")
CLOSE_VALVE_2004 = bytes.fromhex("FE FE 68 10 78 56 34 12 00 00 00 04 04 A0 17 01 99 E5 16")
READING_2004 = bytes.fromhex(
    "FE FE 68 10 78 56 34 12 00 00 00 81 16 90 1F 01 45 23 01 00 2C 00 20 01 00 2C 00 30 12 25 11 26 20 00 00 73 16"
)
# The same frames in 2018 DI order: only the two DI bytes swap, so the checksum (a plain sum) stays.
UNIVERSAL_READ_2018 = bytes.fromhex("FE FE 68 10 AA AA AA AA AA AA AA 01 03 1F 90 01 D2 16")
CLOSE_VALVE_2018 = bytes.fromhex("FE FE 68 10 78 56 34 12 00 00 00 04 04 17 A0 01 99 E5 16")
READING_2018 = bytes.fromhex(
    "FE FE 68 10 78 56 34 12 00 00 00 81 16 1F 90 01 45 23 01 00 2C 00 20 01 00 2C 00 30 12 25 11 26 20 00 00 73 16"
)
# Hand-summed: 68+AA×8+03+03+81+0A+00 = 0x649 → 49.
READ_ADDRESS_2004 = bytes.fromhex("FE FE 68 AA AA AA AA AA AA AA AA 03 03 81 0A 00 49 16")
# Error reply to a read: C1, L=3, SER 01, ST 0004 (low byte first); 68+10+78+56+34+12+C1+03+01+04 = 0x255 → 55.
READ_ERROR = bytes.fromhex("FE FE 68 10 78 56 34 12 00 00 00 C1 03 01 04 00 55 16")

EXPECTED_READING = CurrentData(
    cumulative=Decimal("123.45"),
    unit=Unit.M3,
    settlement=Decimal("120.00"),
    settlement_unit=Unit.M3,
    meter_time=datetime(2026, 11, 25, 12, 30),  # noqa: DTZ001 - meter-local wall clock
    status=MeterStatus(ValveState.OPEN, battery_low=False, raw=0),
    seq=1,
    order=DiOrder.V2004,
)


# ---------------------------------------------------------------- master side


@pytest.mark.parametrize(
    ("order", "expected"), [(DiOrder.V2004, UNIVERSAL_READ_2004), (DiOrder.V2018, UNIVERSAL_READ_2018)]
)
def test_universal_read_is_byte_exact(order: DiOrder, expected: bytes) -> None:
    assert read_request(WILDCARD_ADDRESS, MeterType.COLD_WATER, seq=1, order=order) == expected


@pytest.mark.parametrize(("order", "expected"), [(DiOrder.V2004, CLOSE_VALVE_2004), (DiOrder.V2018, CLOSE_VALVE_2018)])
def test_close_valve_is_byte_exact(order: DiOrder, expected: bytes) -> None:
    assert valve_request(METER, MeterType.COLD_WATER, open_valve=False, seq=1, order=order) == expected


def test_open_valve_sends_55() -> None:
    raw = valve_request(METER, MeterType.COLD_WATER, open_valve=True, seq=7)
    assert decode_frame(raw).data == bytes.fromhex("A0 17 07 55")


def test_read_address_is_byte_exact() -> None:
    assert read_address_request() == READ_ADDRESS_2004


@pytest.mark.parametrize(("raw", "order"), [(READING_2004, DiOrder.V2004), (READING_2018, DiOrder.V2018)])
def test_worked_reply_decodes_to_exact_values(raw: bytes, order: DiOrder) -> None:
    frame = decode_frame(raw)
    assert frame == Frame(MeterType.COLD_WATER, METER, 0x81, frame.data)
    reading = parse_current_data(frame)
    assert reading == replace(EXPECTED_READING, order=order)
    # Decimal equality ignores trailing zeros; the meter's two decimals must survive too.
    assert (str(reading.cumulative), str(reading.settlement)) == ("123.45", "120.00")


def test_error_reply_raises_device_error() -> None:
    with pytest.raises(MeterErrorReply) as caught:
        parse_current_data(decode_frame(READ_ERROR))
    assert isinstance(caught.value, DeviceError)
    assert (caught.value.function, caught.value.status, caught.value.seq) == (Function.READ, 0x0004, 1)


def test_error_reply_with_di_in_front_is_understood() -> None:
    # Some meters put the DI before SER, ST in their error replies.
    frame = Frame(MeterType.COLD_WATER, METER, 0xC1, bytes.fromhex("90 1F 09 01 00"))
    with pytest.raises(MeterErrorReply) as caught:
        parse_current_data(frame)
    assert (caught.value.status, caught.value.seq) == (0x0001, 9)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes.fromhex("90 20 01") + bytes(19), FrameError),  # another DI
        (bytes.fromhex("90 1F 01") + bytes(20), FrameError),  # heat-meter length
        (bytes.fromhex("90 1F 01 45 23 01 00 2C 00 20 01 00 2D 00 30 12 25 11 26 20 00 00"), ValueEncodingError),
        (bytes.fromhex("90 1F 01 4A 23 01 00 2C 00 20 01 00 2C 00 30 12 25 11 26 20 00 00"), ValueEncodingError),
        (bytes.fromhex("90 1F 01 45 23 01 00 2C 00 20 01 00 2C 00 30 12 31 02 26 20 00 00"), ValueEncodingError),
    ],
    ids=["wrong-di", "wrong-length", "unknown-unit", "not-bcd", "31-february"],
)
def test_bad_readings_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_current_data(Frame(MeterType.COLD_WATER, METER, 0x81, data))


def test_reply_to_another_function_is_refused() -> None:
    with pytest.raises(FrameError):
        parse_current_data(decode_frame(CLOSE_VALVE_2004))


@pytest.mark.parametrize("order", DiOrder)
def test_valve_ack_round_trip(order: DiOrder) -> None:
    parse_valve_ack(decode_frame(encode_valve_ack(METER, MeterType.COLD_WATER, seq=1, order=order, status_raw=0x01)))
    # ... and the short form without ST that some meters send.
    short = decode_frame(encode_valve_ack(METER, MeterType.COLD_WATER, seq=1, order=order)).data[:3]
    parse_valve_ack(Frame(MeterType.COLD_WATER, METER, 0x84, short))


def test_refused_valve_command_raises() -> None:
    raw = encode_error_reply(METER, MeterType.COLD_WATER, Function.WRITE, seq=3, order=DiOrder.V2004, status=0x0003)
    frame = decode_frame(raw)
    assert frame.control == 0xC4
    with pytest.raises(MeterErrorReply) as caught:
        parse_valve_ack(frame)
    assert (caught.value.function, caught.value.status, caught.value.seq) == (Function.WRITE, 3, 3)


def test_address_reply_gives_the_header_address() -> None:
    raw = encode_address_reply(METER, MeterType.COLD_WATER, seq=0, order=DiOrder.V2004)
    assert parse_address_reply(decode_frame(raw)) == METER


# ---------------------------------------------------------------- slave side: answer in the order received


@pytest.mark.parametrize(("raw", "order"), [(UNIVERSAL_READ_2004, DiOrder.V2004), (UNIVERSAL_READ_2018, DiOrder.V2018)])
def test_read_request_decodes_in_either_order_and_is_answered_in_it(raw: bytes, order: DiOrder) -> None:
    request = decode_request(decode_frame(raw))
    assert request == ReadRequest(WILDCARD_ADDRESS, MeterType.COLD_WATER, DataId.CURRENT_DATA, 1, order)
    reply = encode_current_data_reply(
        METER,
        MeterType.COLD_WATER,
        cumulative=Decimal("123.45"),
        unit=Unit.M3,
        settlement=Decimal("120.00"),
        settlement_unit=Unit.M3,
        meter_time=datetime(2026, 11, 25, 12, 30),  # noqa: DTZ001
        status_raw=0,
        seq=request.seq,
        order=request.order,
    )
    assert reply == (READING_2004 if order is DiOrder.V2004 else READING_2018)


@pytest.mark.parametrize(("raw", "order"), [(CLOSE_VALVE_2004, DiOrder.V2004), (CLOSE_VALVE_2018, DiOrder.V2018)])
def test_valve_request_decodes_in_either_order(raw: bytes, order: DiOrder) -> None:
    request = decode_request(decode_frame(raw))
    assert request == ValveRequest(METER, MeterType.COLD_WATER, DataId.VALVE_CONTROL, 1, order, open_valve=False)
    ack = decode_frame(encode_valve_ack(METER, MeterType.COLD_WATER, seq=request.seq, order=request.order))
    assert ack.data[:3] == decode_frame(raw).data[:3]  # DI bytes and SER echoed as received


def test_read_address_request_decodes() -> None:
    request = decode_request(decode_frame(READ_ADDRESS_2004))
    assert request == ReadAddressRequest(WILDCARD_ADDRESS, MeterType.ANY, DataId.READ_ADDRESS, 0, DiOrder.V2004)


def test_historic_read_in_2018_order_is_recognised() -> None:
    request = decode_request(decode_frame(read_request(METER, di=0xD120, seq=5, order=DiOrder.V2018)))
    assert request == ReadRequest(METER, MeterType.COLD_WATER, 0xD120, 5, DiOrder.V2018)


def test_unknown_di_is_kept_as_sent() -> None:
    raw = read_request(METER, di=0x1234, seq=2)
    request = decode_request(decode_frame(raw))
    assert isinstance(request, ReadRequest)
    assert read_request(METER, di=request.di, seq=request.seq, order=request.order) == raw


@pytest.mark.parametrize(
    "frame",
    [
        Frame(0x10, METER, 0x81, bytes.fromhex("90 1F 01")),  # a reply
        Frame(0x10, METER, 0x01, bytes.fromhex("90 1F")),  # no SER
        Frame(0x10, METER, 0x04, bytes.fromhex("A0 10 01 00")),  # a write this codec does not serve
        Frame(0x10, METER, 0x09, bytes.fromhex("81 06 01")),  # key version
    ],
)
def test_unsupported_requests_raise_frame_error(frame: Frame) -> None:
    with pytest.raises(FrameError):
        decode_request(frame)


def test_bad_valve_command_byte() -> None:
    with pytest.raises(ValueEncodingError):
        decode_request(Frame(0x10, METER, 0x04, bytes.fromhex("A0 17 01 77")))


@pytest.mark.parametrize(
    ("target", "meter_type", "expected"),
    [
        (METER, MeterType.COLD_WATER, True),
        (WILDCARD_ADDRESS, MeterType.COLD_WATER, True),
        (WILDCARD_ADDRESS, MeterType.ANY, True),
        ("AAAAAAAAAAAA78", MeterType.COLD_WATER, True),
        ("00000012345679", MeterType.COLD_WATER, False),
        (METER, MeterType.HOT_WATER, False),
    ],
)
def test_addressed_to(target: str, meter_type: int, expected: bool) -> None:
    frame = Frame(meter_type, target, 0x01, b"")
    assert addressed_to(frame, METER, MeterType.COLD_WATER) is expected


# ---------------------------------------------------------------- status word


STANDARD = StatusLayout()
VALVE_IN_TOP_BITS = StatusLayout(valve_bits=(6, 7), battery_low_bit=5)  # a vendor that numbers bits the other way
SECOND_BYTE = StatusLayout(valve_bits=(8, 9), battery_low_bit=10)


@pytest.mark.parametrize(
    ("layout", "raw", "valve", "battery_low"),
    [
        (STANDARD, 0x0000, ValveState.OPEN, False),
        (STANDARD, 0x0001, ValveState.CLOSED, False),
        (STANDARD, 0x0003, ValveState.ABNORMAL, False),
        (STANDARD, 0x0002, ValveState.ABNORMAL, False),  # 10 is undefined
        (STANDARD, 0x0004, ValveState.OPEN, True),
        (STANDARD, 0xFF05, ValveState.CLOSED, True),  # vendor bits ignored
        (STANDARD, 0x00C0, ValveState.OPEN, False),
        (VALVE_IN_TOP_BITS, 0x0040, ValveState.CLOSED, False),
        (VALVE_IN_TOP_BITS, 0x00C0, ValveState.ABNORMAL, False),
        (VALVE_IN_TOP_BITS, 0x0020, ValveState.OPEN, True),
        (VALVE_IN_TOP_BITS, 0x0007, ValveState.OPEN, False),
        (SECOND_BYTE, 0x0100, ValveState.CLOSED, False),
        (SECOND_BYTE, 0x0400, ValveState.OPEN, True),
        (SECOND_BYTE, 0x0007, ValveState.OPEN, False),
    ],
)
def test_status_layouts(layout: StatusLayout, raw: int, valve: ValveState, battery_low: bool) -> None:
    assert decode_status(raw, layout) == MeterStatus(valve, battery_low, raw)


def test_parse_current_data_uses_the_layout() -> None:
    raw = encode_current_data_reply(
        METER,
        MeterType.COLD_WATER,
        cumulative=Decimal(1),
        unit=Unit.M3,
        settlement=Decimal(0),
        settlement_unit=Unit.M3,
        meter_time=datetime(2026, 1, 1),  # noqa: DTZ001
        status_raw=0x0041,
        seq=0,
        order=DiOrder.V2004,
    )
    frame = decode_frame(raw)
    assert parse_current_data(frame).status.valve is ValveState.CLOSED
    assert parse_current_data(frame, layout=VALVE_IN_TOP_BITS).status.valve is ValveState.CLOSED
    assert parse_current_data(frame, layout=SECOND_BYTE).status.valve is ValveState.OPEN


@pytest.mark.parametrize("bits", [((0, 0), 2), ((0, 1), 1), ((0, 16), 2), ((-1, 1), 2)])
def test_status_layout_rejects_bad_positions(bits: tuple[tuple[int, int], int]) -> None:
    with pytest.raises(ValueError, match="distinct bit positions"):
        StatusLayout(valve_bits=bits[0], battery_low_bit=bits[1])


# ---------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (READING_2004[:-2] + bytes([0x74, 0x16]), ChecksumError),
        (READING_2004[:-1] + b"\x17", FrameError),
        (READING_2004 + b"\x00", FrameError),
        (b"\xfe" * 5 + READING_2004[2:], FrameError),
        (READING_2004[:12], FrameError),
        (b"\xfe\xfe\x67" + READING_2004[3:], FrameError),
    ],
    ids=["checksum", "end-byte", "trailing", "five-fe", "short", "start-byte"],
)
def test_decode_frame_errors(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_frame(raw)


def test_decode_frame_accepts_zero_to_four_fe() -> None:
    for count in range(5):
        assert decode_frame(b"\xfe" * count + READING_2004[2:]) == decode_frame(READING_2004)


@pytest.mark.parametrize(
    ("frame", "preamble"),
    [
        (Frame(0x10, "1234", 0x01, b""), 2),  # short address
        (Frame(0x10, "0000001234567G", 0x01, b""), 2),
        (Frame(0x100, METER, 0x01, b""), 2),
        (Frame(0x10, METER, 0x100, b""), 2),
        (Frame(0x10, METER, 0x01, bytes(0x65)), 2),  # beyond L = 64H
        (Frame(0x10, METER, 0x01, b""), 5),
    ],
)
def test_encode_frame_rejects(frame: Frame, preamble: int) -> None:
    with pytest.raises(ValueEncodingError):
        encode_frame(frame, preamble=preamble)


@pytest.mark.parametrize("address", ["0000001234567", "0000001234567B", "A000001234567X"])
def test_requests_need_a_decimal_or_wildcard_address(address: str) -> None:
    with pytest.raises(ValueEncodingError):
        read_request(address)


def test_replies_need_a_decimal_address() -> None:
    with pytest.raises(ValueEncodingError):
        encode_address_reply(WILDCARD_ADDRESS, MeterType.COLD_WATER, seq=0, order=DiOrder.V2004)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cumulative": Decimal("1.234")},  # three decimals
        {"cumulative": Decimal("1000000")},  # past 999999.99
        {"settlement": Decimal("-1")},
        {"status_raw": 0x10000},
        {"seq": 256},
        {"unit": 0x99},
    ],
)
def test_reply_values_are_checked(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {
        "cumulative": Decimal(0),
        "unit": Unit.M3,
        "settlement": Decimal(0),
        "settlement_unit": Unit.M3,
        "meter_time": datetime(2026, 1, 1),  # noqa: DTZ001
        "status_raw": 0,
        "seq": 0,
        "order": DiOrder.V2004,
    } | kwargs
    with pytest.raises(ValueEncodingError):
        encode_current_data_reply(METER, MeterType.COLD_WATER, **values)  # type: ignore[arg-type]


def test_parser_finds_worked_frames_in_noise() -> None:
    parser = StreamParser()
    stream = b"\x00\x68\x16\xfe" + READING_2004 + b"\x68\x10\xff" + CLOSE_VALVE_2018 + b"\xfe"
    frames = [frame for byte in stream for frame in parser.feed(bytes([byte]))]
    assert frames == [decode_frame(READING_2004), decode_frame(CLOSE_VALVE_2018)]
    assert parser.rejected > 0
    assert isinstance(parser.last_error, FrameError)


def test_parser_does_not_wait_for_a_false_start() -> None:
    # 68 followed by a header whose L promises 99 more bytes must not hold back the frame behind it.
    parser = StreamParser()
    false_start = bytes.fromhex("68 10 00 00 00 00 00 00 00 01 63")
    assert parser.feed(false_start + READING_2004) == [decode_frame(READING_2004)]
    assert parser.rejected == 1
