"""DL/T 645 value catalogue: BCD layouts, signs, dates, status words and the errors for bad content."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest

from shuidian_protocols.dlt645 import (
    CATALOGUE,
    MeterType,
    StatusWord1,
    StatusWord3,
    Value,
    ValueKind,
    decode_value,
    encode_value,
)
from shuidian_protocols.errors import ValueEncodingError


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def test_catalogue_covers_every_di_in_protocols_md() -> None:
    expected = {
        0x00000000, 0x00000100, 0x00000200, 0x00000300, 0x00000400,
        0x00010000, 0x00010100, 0x00010200, 0x00010300, 0x00010400, 0x0001FF00,
        0x02010100, 0x02010200, 0x02010300, 0x0201FF00,
        0x02020100, 0x02020200, 0x02020300, 0x0202FF00,
        0x02030000, 0x02060000, 0x02800002,
        0x00900100, 0x00900101, 0x00900200, 0x00900201,
        0x03330201, 0x04001001, 0x04001002,
        0x04000101, 0x04000102, 0x04000501, 0x04000503,
    }  # fmt: skip
    assert expected <= set(CATALOGUE)
    for di, item in CATALOGUE.items():
        assert item.di == di
        assert item.size % item.elements == 0


@pytest.mark.parametrize(
    ("di", "unit", "size", "decimals", "signed"),
    [
        (0x00010000, "kWh", 4, 2, False),
        (0x00000000, "kWh", 4, 2, True),
        (0x02010100, "V", 2, 1, False),
        (0x02020100, "A", 3, 3, True),
        (0x02030000, "kW", 3, 4, True),
        (0x02060000, "", 2, 3, True),
        (0x02800002, "Hz", 2, 2, False),
        (0x00900200, "CNY", 4, 2, False),
        (0x04001002, "CNY", 4, 2, False),
    ],
)
def test_layouts_follow_the_table(di: int, unit: str, size: int, decimals: int, signed: bool) -> None:
    item = CATALOGUE[di]
    assert (item.unit, item.size, item.decimals, item.signed) == (unit, size, decimals, signed)


@pytest.mark.parametrize(
    ("di", "payload", "value"),
    [
        (0x02010300, hx("05 23"), Decimal("230.5")),
        (0x02020100, hx("34 12 00"), Decimal("1.234")),
        (0x02020100, hx("34 12 80"), Decimal("-1.234")),  # bit 7 of the top byte is the sign
        (0x02030000, hx("00 50 81"), Decimal("-1.5000")),
        (0x02060000, hx("00 85"), Decimal("-0.500")),
        (0x02060000, hx("00 10"), Decimal("1.000")),
        (0x02800002, hx("98 49"), Decimal("49.98")),
        (0x00000000, hx("00 00 01 80"), Decimal("-100.00")),
        (0x00900101, hx("99 99 99 99"), Decimal("999999.99")),
        (0x03330201, hx("34 12"), 1234),
        (0x04000101, hx("03 25 11 26"), date(2026, 11, 25)),
        (0x04000102, hx("00 30 12"), time(12, 30, 0)),
        (0x0201FF00, hx("01 22 02 22 03 22"), (Decimal("220.1"), Decimal("220.2"), Decimal("220.3"))),
    ],
)
def test_decode_examples(di: int, payload: bytes, value: Value) -> None:
    assert decode_value(di, payload) == value
    assert encode_value(di, value) == payload


def test_forward_energy_block_is_total_and_four_tariffs() -> None:
    payload = b"".join(encode_value(0x00010000, Decimal(v)) for v in ("100.00", "10.00", "20.00", "30.00", "40.00"))
    assert decode_value(0x0001FF00, payload) == tuple(
        Decimal(v) for v in ("100.00", "10.00", "20.00", "30.00", "40.00")
    )


def test_block_takes_as_many_elements_as_the_meter_sends() -> None:
    assert decode_value(0x0201FF00, hx("01 22")) == (Decimal("220.1"),)  # single-phase meter
    assert len(decode_value(0x0001FF00, bytes(4 * 9))) == 9  # type: ignore[arg-type]
    for bad in (b"", hx("01 22 02")):
        with pytest.raises(ValueEncodingError):
            decode_value(0x0201FF00, bad)
    with pytest.raises(ValueEncodingError):
        encode_value(0x0201FF00, ())


def test_date_ignores_a_wrong_weekday_but_writes_the_right_one() -> None:
    assert decode_value(0x04000101, hx("06 25 11 26")) == date(2026, 11, 25)
    assert encode_value(0x04000101, date(2026, 11, 29)) == hx("00 29 11 26")  # a Sunday is 0


@pytest.mark.parametrize(
    ("di", "payload"),
    [
        (0x00010000, hx("5A 34 12 00")),  # low nibble A
        (0x00010000, hx("56 34 12 A0")),  # high nibble A
        (0x02010100, hx("FF FF")),
        (0x02020100, hx("00 00 8A")),  # sign bit set, then a non-BCD nibble
        (0x03330201, hx("0A 00")),
        (0x04000101, hx("03 25 1A 26")),
        (0x04000101, hx("0F 25 11 26")),  # even the ignored weekday must be BCD
        (0x04000102, hx("00 3C 12")),
    ],
)
def test_non_bcd_nibbles_raise(di: int, payload: bytes) -> None:
    with pytest.raises(ValueEncodingError):
        decode_value(di, payload)


@pytest.mark.parametrize(
    ("di", "payload"),
    [
        (0x04000101, hx("03 31 02 26")),  # 31 February
        (0x04000101, hx("03 25 00 26")),  # month 0
        (0x04000102, hx("60 30 12")),  # second 60
        (0x04000102, hx("00 00 24")),  # hour 24
        (0x00010000, hx("56 34 12")),  # wrong size
        (0x02010100, hx("01 22 00")),
        (0x04000501, hx("00")),
    ],
)
def test_impossible_content_raises(di: int, payload: bytes) -> None:
    with pytest.raises(ValueEncodingError):
        decode_value(di, payload)


@pytest.mark.parametrize(
    ("di", "value"),
    [
        (0x00010000, Decimal("1234.567")),  # too many decimals: never rounded
        (0x00010000, Decimal("1000000.00")),  # too large
        (0x00010000, Decimal("-1.00")),  # negative in an unsigned field
        (0x02030000, Decimal("80.0000")),  # a signed field's top digit stops at 7
        (0x02030000, Decimal("-80.0000")),
        (0x00010000, Decimal("NaN")),
        (0x00010000, Decimal("Infinity")),
        (0x00010000, Decimal("sNaN")),
        (0x00010000, Decimal("1E+999999")),
        (0x00010000, Decimal("1.000000000000000000000000000000000001")),
        (0x00010000, 1.5),  # float is never accepted
        (0x03330201, True),
        (0x03330201, 10000),
        (0x04000101, time(12, 0)),
        (0x04000101, date(2100, 1, 1)),
        (0x04000102, date(2026, 1, 1)),
        (0x04000501, StatusWord3()),
        (0x04000503, 0x1234),
        (0x0001FF00, Decimal("1.00")),
        (0x0001FF00, (Decimal("1.00"), 1.0)),
    ],
)
def test_values_that_cannot_be_encoded(di: int, value: object) -> None:
    with pytest.raises(ValueEncodingError):
        encode_value(di, value)  # type: ignore[arg-type]


def test_integers_are_exact_decimals() -> None:
    assert encode_value(0x00900200, 50) == encode_value(0x00900200, Decimal("50.00")) == hx("00 50 00 00")


def test_unknown_di() -> None:
    with pytest.raises(ValueEncodingError):
        decode_value(0x12345678, b"")
    with pytest.raises(ValueEncodingError):
        encode_value(0x12345678, Decimal(0))


def test_status_word_1_bits() -> None:
    word = StatusWord1.from_bytes(hx("1C 00"))
    assert word.clock_battery_low
    assert word.reading_battery_low
    assert word.power_reversed
    assert StatusWord1.from_bytes(hx("04 00")) == StatusWord1(clock_battery_low=True)
    assert StatusWord1.from_bytes(hx("10 00")) == StatusWord1(power_reversed=True)
    other = StatusWord1.from_bytes(hx("22 80"))  # unmodelled bits survive a round trip
    assert not other.clock_battery_low
    assert not other.reading_battery_low
    assert not other.power_reversed
    assert other.to_bytes() == hx("22 80")
    assert decode_value(0x04000501, hx("08 00")) == StatusWord1(reading_battery_low=True)


def test_status_word_3_bits() -> None:
    word = StatusWord3.from_bytes(hx("50 12"))  # b4, b6, b9..8 = 10, b12
    assert word.relay_open
    assert word.relay_commanded_trip
    assert word.keep_power
    assert not word.pre_trip_alarm
    assert word.meter_type is MeterType.MONEY_PREPAID
    assert StatusWord3.from_bytes(hx("80 01")) == StatusWord3(pre_trip_alarm=True, meter_type=MeterType.ENERGY_PREPAID)
    assert StatusWord3(relay_open=True, keep_power=True).to_bytes() == hx("10 10")
    assert decode_value(0x04000503, hx("00 00")) == StatusWord3()


def test_named_fields_win_over_raw() -> None:
    word = StatusWord3(relay_open=False, raw=0x0010 | 0x0008)
    assert word.raw == 0x0008
    assert StatusWord1(clock_battery_low=True, raw=0x8000).raw == 0x8004
    with pytest.raises(ValueEncodingError):
        StatusWord1(raw=0x10000)
    with pytest.raises(ValueEncodingError):
        StatusWord3(meter_type=4)  # type: ignore[arg-type]


def test_every_kind_is_used() -> None:
    assert {item.kind for item in CATALOGUE.values()} == set(ValueKind)
