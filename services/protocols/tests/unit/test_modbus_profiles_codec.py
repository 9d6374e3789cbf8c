"""Modbus profile codecs: known register values, encode/decode round trips, read planning and circuit addressing."""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_protocols.errors import ValueEncodingError
from shuidian_protocols.modbus_profiles import (
    DeviceProfile,
    ReadBlock,
    RegisterSpec,
    RegisterType,
    WordOrder,
    available_profiles,
    circuit_unit_id,
    decode_block,
    decode_register,
    encode_register,
    encode_registers,
    load_profile,
    plan_reads,
)

SCALES = [Decimal(1), Decimal("0.1"), Decimal("0.01"), Decimal("0.001"), Decimal(10)]
RANGES = {
    RegisterType.UINT16: (0, 0xFFFF),
    RegisterType.INT16: (-0x8000, 0x7FFF),
    RegisterType.UINT32: (0, 0xFFFF_FFFF),
    RegisterType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
}


def spec(
    register_type: RegisterType, word_order: WordOrder = WordOrder.BIG, scale: Decimal = Decimal(1)
) -> RegisterSpec:
    return RegisterSpec(
        name="reading", address=0, function=3, type=register_type, word_order=word_order, scale=scale, confirmed=False
    )


def float32_words(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


# ---------------------------------------------------------------- known readings


@pytest.mark.parametrize(
    ("model", "name", "words", "expected"),
    [
        # DDSY1352 manual: 0000H UINT32 ×0.01 kWh; 123456 = 0x0001E240.
        ("acrel-ddsy1352", "energy_active_import_total", [0x0001, 0xE240], Decimal("1234.56")),
        ("acrel-ddsy1352", "energy_tariff_4", [0x0000, 0x0064], Decimal("1.00")),
        ("acrel-ddsy1352", "voltage_a", [2201], Decimal("220.1")),
        ("acrel-ddsy1352", "current_a", [523], Decimal("5.23")),
        ("acrel-ddsy1352", "power_active", [0xFFFF], Decimal("-0.001")),  # INT16, power flowing back
        ("acrel-ddsy1352", "power_active", [1150], Decimal("1.150")),
        ("acrel-ddsy1352", "power_factor", [0xFC18], Decimal("-1.000")),  # -1000 × 0.001
        ("chint-ddsu666", "voltage_a", float32_words(230.1), Decimal("230.1")),
        ("chint-ddsu666", "energy_active_import_total", float32_words(12345.67), Decimal("12345.67")),
        ("chint-ddsu666", "power_active", [0x0000, 0x0000], Decimal(0)),
        ("eastron-sdm120", "power_active", float32_words(1234.5), Decimal("1.2345")),  # W scaled to kW
        ("eastron-sdm120", "frequency", float32_words(49.98), Decimal("49.98")),
        ("generic-water-valve", "water_volume_total", [0x0001, 0x0000], Decimal("65.536")),
    ],
)
def test_known_register_values(model: str, name: str, words: list[int], expected: Decimal) -> None:
    profile = load_profile(model)
    value = decode_register(profile.register(name), words)
    assert value == expected
    assert str(value) == str(expected)  # the exponent too: 220.1, not 220.10000610…
    assert encode_register(profile.register(name), expected) == words


def test_float32_reads_back_as_its_shortest_decimal() -> None:
    # 123456.78 is not a float32: the nearest is 123456.78125, and 123456.78 is the shortest decimal naming it.
    assert str(decode_register(spec(RegisterType.FLOAT32), float32_words(123456.78))) == "123456.78"
    assert str(decode_register(spec(RegisterType.FLOAT32), float32_words(0.1))) == "0.1"
    # Past 2**24 a float32 cannot count by ones: the meter's 16777217 is 16777216 on the wire.
    assert decode_register(spec(RegisterType.FLOAT32), float32_words(16777217.0)) == Decimal(16777216)
    assert decode_register(spec(RegisterType.FLOAT32), float32_words(230.0)) == Decimal(230)
    assert str(decode_register(spec(RegisterType.FLOAT32), float32_words(3e10))) == "30000000000"


def test_ddsy1352_whole_block() -> None:
    profile = load_profile("acrel-ddsy1352")
    (block,) = plan_reads(profile)
    assert (block.function, block.start, block.count) == (3, 0x0000, 17)
    registers = [0] * 17
    registers[0:2] = [0x0001, 0xE240]  # 1234.56 kWh
    registers[2:10] = [0, 100, 0, 200, 0, 300, 0, 400]
    registers[0x0A] = 1234  # meter code: not a reading, read only because it sits in the gap
    registers[0x0B:0x11] = [2201, 523, 1150, 0xBEEF, 1200, 958]
    assert decode_block(profile, block, registers) == {
        "energy_active_import_total": Decimal("1234.56"),
        "energy_tariff_1": Decimal("1.00"),
        "energy_tariff_2": Decimal("2.00"),
        "energy_tariff_3": Decimal("3.00"),
        "energy_tariff_4": Decimal("4.00"),
        "voltage_a": Decimal("220.1"),
        "current_a": Decimal("5.23"),
        "power_active": Decimal("1.150"),
        "power_apparent": Decimal("1.200"),
        "power_factor": Decimal("0.958"),
    }


@pytest.mark.parametrize(
    ("register", "words"),
    [
        (spec(RegisterType.UINT32), [1]),  # one word short
        (spec(RegisterType.UINT16), [0x10000]),
        (spec(RegisterType.UINT16), [-1]),
        (spec(RegisterType.FLOAT32), float32_words(math.nan)),
        (spec(RegisterType.FLOAT32), float32_words(math.inf)),
    ],
)
def test_undecodable_words(register: RegisterSpec, words: list[int]) -> None:
    with pytest.raises(ValueEncodingError):
        decode_register(register, words)


@pytest.mark.parametrize(
    ("register", "value"),
    [
        (spec(RegisterType.UINT16), Decimal(-1)),
        (spec(RegisterType.UINT16), Decimal(65536)),
        (spec(RegisterType.INT16), Decimal(32768)),
        (spec(RegisterType.INT32), Decimal(-(2**31) - 1)),
        (spec(RegisterType.UINT16, scale=Decimal("0.1")), Decimal("1.25")),  # not a multiple of the scale
        (spec(RegisterType.UINT16), Decimal("NaN")),
        (spec(RegisterType.FLOAT32), Decimal("1e39")),
        (spec(RegisterType.FLOAT32), Decimal("Infinity")),
    ],
)
def test_unencodable_values(register: RegisterSpec, value: Decimal) -> None:
    with pytest.raises(ValueEncodingError):
        encode_register(register, value)


def test_word_order_swaps_the_registers() -> None:
    value = Decimal(0x12345678)
    assert encode_register(spec(RegisterType.UINT32, WordOrder.BIG), value) == [0x1234, 0x5678]
    assert encode_register(spec(RegisterType.UINT32, WordOrder.LITTLE), value) == [0x5678, 0x1234]
    assert decode_register(spec(RegisterType.UINT32, WordOrder.LITTLE), [0x5678, 0x1234]) == value


def test_decode_block_checks_the_answer_length() -> None:
    profile = load_profile("acrel-ddsy1352")
    (block,) = plan_reads(profile)
    with pytest.raises(ValueEncodingError, match="returned 16"):
        decode_block(profile, block, [0] * 16)
    with pytest.raises(ValueError, match="not inside the block"):
        decode_block(profile, ReadBlock(3, 0x000C, 2, ("voltage_a",)), [0, 0])


# ---------------------------------------------------------------- round trips


@st.composite
def integer_cases(draw: st.DrawFn) -> tuple[RegisterSpec, Decimal]:
    register_type = draw(st.sampled_from(list(RANGES)))
    scale = draw(st.sampled_from(SCALES))
    low, high = RANGES[register_type]
    raw = draw(st.integers(low, high))
    return spec(register_type, draw(st.sampled_from(WordOrder)), scale), Decimal(raw) * scale


@given(case=integer_cases())
def test_integer_values_round_trip(case: tuple[RegisterSpec, Decimal]) -> None:
    register, value = case
    words = encode_register(register, value)
    assert len(words) == register.size
    assert all(0 <= word <= 0xFFFF for word in words)
    assert decode_register(register, words) == value


@given(
    register_type=st.sampled_from(list(RegisterType)),
    word_order=st.sampled_from(WordOrder),
    scale=st.sampled_from(SCALES),
    data=st.data(),
)
def test_any_register_words_round_trip(
    register_type: RegisterType, word_order: WordOrder, scale: Decimal, data: st.DataObject
) -> None:
    register = spec(register_type, word_order, scale)
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=register.size, max_size=register.size))
    try:
        value = decode_register(register, words)
    except ValueEncodingError:
        assert register_type is RegisterType.FLOAT32  # NaN and infinities only
        return
    # Every finite float32 comes back bit for bit, -0.0 included: the shortest decimal loses nothing.
    assert encode_register(register, value) == words


@given(
    mantissa=st.integers(-999_999, 999_999),
    exponent=st.integers(-6, 3),
    word_order=st.sampled_from(WordOrder),
    scale=st.sampled_from(SCALES),
)
def test_float32_values_of_six_digits_round_trip_exactly(
    mantissa: int, exponent: int, word_order: WordOrder, scale: Decimal
) -> None:
    register = spec(RegisterType.FLOAT32, word_order, scale)
    value = Decimal(mantissa).scaleb(exponent) * scale
    assert decode_register(register, encode_register(register, value)) == value


@pytest.mark.parametrize("model", available_profiles())
@given(data=st.data())
def test_whole_profile_round_trips_through_planned_reads(model: str, data: st.DataObject) -> None:
    profile = load_profile(model)
    values: dict[str, Decimal] = {}
    for register in profile.registers:
        if register.type is RegisterType.FLOAT32:
            value = Decimal(data.draw(st.integers(-999_999, 999_999))).scaleb(-2) * register.scale
        else:
            low, high = RANGES[register.type]
            value = Decimal(data.draw(st.integers(low, high))) * register.scale
        values[register.name] = value
    words = encode_registers(profile, values)
    readings: dict[str, Decimal] = {}
    for block in plan_reads(profile):
        registers = [words.get((block.function, block.start + offset), 0) for offset in range(block.count)]
        readings |= decode_block(profile, block, registers)
    assert readings == values


# ---------------------------------------------------------------- read planning


@st.composite
def profiles(draw: st.DrawFn) -> DeviceProfile:
    registers: list[dict[str, Any]] = []
    for function in (3, 4):
        address = draw(st.integers(0, 50))
        for index in range(draw(st.integers(0, 15))):
            register_type = draw(st.sampled_from(list(RegisterType)))
            registers.append(
                {
                    "name": f"r{function}_{index}",
                    "address": address,
                    "function": function,
                    "type": register_type.value,
                    "confirmed": False,
                }
            )
            address += register_type.size + draw(st.integers(0, 12))
    if not registers:
        registers.append({"name": "only", "address": 0, "function": 3, "type": "uint16", "confirmed": False})
    return DeviceProfile.model_validate(
        {
            "model": "generated",
            "vendor": "test",
            "description": "generated",
            "kind": "electricity",
            "serial": {"baud": 9600, "parity": "N", "confirmed": False},
            "max_registers_per_read": draw(st.integers(2, 125)),
            "max_gap": draw(st.integers(0, 10)),
            "registers": registers,
        }
    )


@given(profile=profiles(), data=st.data())
def test_plan_reads_covers_everything_within_limits(profile: DeviceProfile, data: st.DataObject) -> None:
    all_names = [register.name for register in profile.registers]
    wanted = data.draw(st.none() | st.lists(st.sampled_from(all_names), max_size=2 * len(all_names)))
    blocks = plan_reads(profile, wanted)
    expected = set(all_names if wanted is None else wanted)
    planned = [name for block in blocks for name in block.names]
    assert sorted(planned) == sorted(expected)  # every register once, nothing unrequested
    for block in blocks:
        assert 1 <= block.count <= profile.max_registers_per_read
        members = [profile.register(name) for name in block.names]
        assert [m.address for m in members] == sorted(m.address for m in members)
        assert members[0].address == block.start
        assert members[-1].end == block.start + block.count
        for before, after in pairwise(members):
            assert after.address - before.end <= profile.max_gap
        assert all(m.function == block.function for m in members)
    # Greedy packing leaves no two neighbouring blocks that could have been one.
    for first, second in pairwise(blocks):
        if first.function == second.function:
            gap = second.start - (first.start + first.count)
            merged = second.start + second.count - first.start
            assert gap > profile.max_gap or merged > profile.max_registers_per_read


def test_plan_reads_respects_a_small_read_limit() -> None:
    profile = load_profile("acrel-ddsy1352").model_copy(update={"max_registers_per_read": 4})
    blocks = plan_reads(profile)
    # The one-register gaps at 000AH and 000EH are read through, as long as the block stays within 4.
    assert [(b.start, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 4), (0x0C, 4), (0x10, 1)]


def test_plan_reads_splits_functions_and_far_registers() -> None:
    blocks = plan_reads(load_profile("chint-ddsu666"))
    assert [(b.function, b.start, b.count) for b in blocks] == [(4, 0x2000, 16), (4, 0x4000, 2)]
    assert plan_reads(load_profile("chint-ddsu666"), ["energy_active_import_total"]) == [
        ReadBlock(4, 0x4000, 2, ("energy_active_import_total",))
    ]
    assert plan_reads(load_profile("chint-ddsu666"), []) == []


def test_plan_reads_refuses_unknown_names() -> None:
    with pytest.raises(KeyError, match="acrel-ddsy1352 has no register 'balance_money'"):
        plan_reads(load_profile("acrel-ddsy1352"), ["voltage_a", "balance_money"])


# ---------------------------------------------------------------- multi-circuit modules


@pytest.mark.parametrize(
    ("module", "circuit", "phases", "unit_id"),
    [
        (1, 1, 1, 1),
        (1, 36, 1, 36),
        (2, 1, 1, 37),
        (3, 1, 1, 73),
        (3, 5, 1, 77),
        (1, 1, 3, 1),
        (1, 2, 3, 4),
        (1, 12, 3, 34),
        (2, 12, 3, 70),
        (6, 36, 1, 216),
        (7, 31, 1, 247),
        (7, 10, 3, 244),  # ids 244..246
    ],
)
def test_adf400l_circuit_unit_ids(module: int, circuit: int, phases: int, unit_id: int) -> None:
    assert circuit_unit_id(load_profile("acrel-adf400l"), module, circuit, phases=phases) == unit_id  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "circuit", "phases", "message"),
    [
        (1, 37, 1, r"outside 1\.\.36"),
        (1, 13, 3, r"outside 1\.\.12"),
        (1, 0, 1, r"outside 1\.\.36"),
        (0, 1, 1, "count from 1"),
        (7, 32, 1, "beyond 247"),  # 7 × 36 = 252 ids do not fit in 1..247
        (7, 11, 3, "beyond 247"),
    ],
)
def test_adf400l_circuit_unit_id_limits(module: int, circuit: int, phases: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        circuit_unit_id(load_profile("acrel-adf400l"), module, circuit, phases=phases)  # type: ignore[arg-type]


def test_single_meters_have_no_circuits() -> None:
    with pytest.raises(ValueError, match="not a multi-circuit module"):
        circuit_unit_id(load_profile("acrel-ddsy1352"), 1, 1)
