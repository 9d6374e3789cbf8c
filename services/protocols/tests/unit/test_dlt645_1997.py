"""DL/T 645-1997 read subset: 2-byte DIs, function 01, replies 81 / C1, in the 2007 envelope."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shuidian_protocols.dlt645 import (
    CATALOGUE_1997,
    ErrorBits,
    MeterErrorReply,
    ReadRequest1997,
    decode_frame,
    decode_request,
    decode_request_1997,
    decode_value_1997,
    encode_error_reply_1997,
    encode_read_reply_1997,
    encode_value_1997,
    parse_read_reply,
    parse_read_reply_1997,
    read_request,
    read_request_1997,
)
from shuidian_protocols.errors import FrameError, ValueEncodingError

METER = "123456789012"

# Checksums worked by hand: 68+12+90+78+56+34+12+68+01+02+43+C3 = 0x38F → 8F.
READ_9010 = bytes.fromhex("FE FE FE FE 68 12 90 78 56 34 12 68 01 02 43 C3 8F 16")
# 9010 = 1234.56 kWh: DI 10 90 then 56 34 12 00, each +33; sum … = 0x57B → 7B.
REPLY_9010 = bytes.fromhex("FE FE FE FE 68 12 90 78 56 34 12 68 81 06 43 C3 89 67 45 33 7B 16")


def test_read_request_bytes() -> None:
    assert read_request_1997(METER, 0x9010).hex(" ") == READ_9010.hex(" ")


def test_reply_decodes_and_encodes() -> None:
    frame = decode_frame(REPLY_9010)
    assert frame.control == 0x81
    assert decode_value_1997(0x9010, parse_read_reply_1997(frame, 0x9010)) == Decimal("1234.56")
    assert encode_read_reply_1997(METER, 0x9010, encode_value_1997(0x9010, Decimal("1234.56"))) == REPLY_9010


@pytest.mark.parametrize(
    ("di", "payload", "value"),
    [
        (0x9010, bytes.fromhex("00 00 00 00"), Decimal("0.00")),
        (0xB611, bytes.fromhex("20 02"), Decimal("220")),
        (0xB621, bytes.fromhex("25 05"), Decimal("5.25")),
        (0xB630, bytes.fromhex("00 50 01"), Decimal("1.5000")),
    ],
)
def test_values(di: int, payload: bytes, value: Decimal) -> None:
    assert decode_value_1997(di, payload) == value
    assert encode_value_1997(di, value) == payload


def test_catalogue_has_the_four_dis() -> None:
    assert set(CATALOGUE_1997) == {0x9010, 0xB611, 0xB621, 0xB630}


def test_bad_values() -> None:
    with pytest.raises(ValueEncodingError):
        decode_value_1997(0xB611, bytes.fromhex("2A 02"))
    with pytest.raises(ValueEncodingError):
        decode_value_1997(0xB611, bytes.fromhex("20"))
    with pytest.raises(ValueEncodingError):
        encode_value_1997(0xB611, Decimal("220.5"))
    with pytest.raises(ValueEncodingError):
        decode_value_1997(0x02010100, bytes(2))
    with pytest.raises(ValueEncodingError):
        read_request_1997(METER, 0x10000)


def test_error_reply() -> None:
    frame = decode_frame(encode_error_reply_1997(METER, ErrorBits.NO_DATA))
    assert frame.control == 0xC1
    with pytest.raises(MeterErrorReply) as caught:
        parse_read_reply_1997(frame, 0x9010)
    assert caught.value.error == ErrorBits.NO_DATA
    assert caught.value.function == 0x01


def test_meter_side() -> None:
    assert decode_request_1997(decode_frame(READ_9010)) == ReadRequest1997(METER, 0x9010)
    with pytest.raises(FrameError):
        decode_request_1997(decode_frame(read_request(METER, 0x00010000)))
    with pytest.raises(FrameError):
        decode_request_1997(decode_frame(REPLY_9010))
    with pytest.raises(FrameError):
        decode_request(decode_frame(READ_9010))  # a 2007 meter does not know function 01


def test_editions_do_not_mix() -> None:
    with pytest.raises(FrameError):
        parse_read_reply(decode_frame(REPLY_9010), 0x9010)
    with pytest.raises(FrameError):
        parse_read_reply_1997(decode_frame(REPLY_9010), 0xB611)


def test_more_bit() -> None:
    assert decode_frame(encode_read_reply_1997(METER, 0x9010, bytes(4), more=True)).control == 0xA1
