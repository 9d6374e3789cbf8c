"""Modbus device profiles: every packaged file loads, and a malformed one is refused naming file and field."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest
import yaml

from shuidian_protocols.modbus_profiles import (
    CANONICAL_UNITS,
    ProfileError,
    RegisterType,
    WordOrder,
    available_profiles,
    control_writes,
    load_profile,
    parse_profile,
    plan_reads,
)

PACKAGED = [
    "acrel-adf400l",
    "acrel-ddsy1352",
    "acrel-dtsy1352",
    "chint-ddsu666",
    "eastron-sdm120",
    "generic-rcd-meter",
    "generic-water-valve",
]

VALID = textwrap.dedent(
    """\
    model: test-meter
    vendor: Test
    description: a meter for tests
    kind: electricity
    serial: {baud: 9600, parity: E, confirmed: true}
    max_registers_per_read: 20
    registers:
      - {name: voltage_a, address: 0x000B, function: 3, type: uint16, scale: "0.1", unit: V, confirmed: true, source: manual}
      - {name: energy_active_import_total, address: 0x0000, function: 3, type: uint32, scale: "0.01", unit: kWh, confirmed: false}
    controls:
      - action: trip
        writes: [{function: 16, address: 0x0057, values: [1, 1]}]
        confirmed: false
    """
)


def _variant(edit: str, replacement: str) -> str:
    assert edit in VALID, edit
    return VALID.replace(edit, replacement)


def test_the_packaged_profiles_are_the_expected_ones() -> None:
    assert available_profiles() == PACKAGED


@pytest.mark.parametrize("model", PACKAGED)
def test_every_packaged_profile_loads_and_is_consistent(model: str) -> None:
    profile = load_profile(model)
    assert profile.model == model
    assert load_profile(model) is profile  # cached
    for register in profile.registers:
        assert register.unit == CANONICAL_UNITS.get(register.name, register.unit)
        assert register.confirmed or register.source or register.note, f"{register.name} says nothing of its origin"
    planned = [name for block in plan_reads(profile) for name in block.names]
    assert sorted(planned) == sorted(r.name for r in profile.registers)
    actions = {control.action for control in profile.controls}
    if profile.kind == "water":
        assert {"valve_open", "valve_close"} <= actions
    elif actions:
        assert {"trip", "close"} <= actions


def test_ddsy1352_is_the_manual_table() -> None:
    profile = load_profile("acrel-ddsy1352")
    energy = profile.register("energy_active_import_total")
    assert (energy.address, energy.function, energy.type, energy.scale, energy.confirmed) == (
        0x0000,
        3,
        RegisterType.UINT32,
        Decimal("0.01"),
        True,
    )
    assert [profile.register(f"energy_tariff_{n}").address for n in range(1, 5)] == [2, 4, 6, 8]
    assert profile.register("power_active").type is RegisterType.INT16
    assert profile.serial.confirmed is False
    # Balance and relay state are not in the manual: the profile must not pretend to know them.
    for unknown in ("balance_money", "relay_open"):
        with pytest.raises(KeyError, match=unknown):
            profile.register(unknown)


@pytest.mark.parametrize("model", ["acrel-ddsy1352", "acrel-dtsy1352", "acrel-adf400l"])
def test_acrel_relay_writes_are_flagged_unconfirmed(model: str) -> None:
    profile = load_profile(model)
    assert control_writes(profile, "trip") == [(16, 0x0057, [0x0001, 0x0001])]
    assert control_writes(profile, "close") == [(16, 0x0057, [0x0001, 0x0000])]
    assert not profile.control("trip").confirmed
    assert not profile.control("close").confirmed


def test_adf400l_map_is_unconfirmed_but_its_addressing_is_documented() -> None:
    profile = load_profile("acrel-adf400l")
    assert profile.confirmed_names() == []
    assert profile.circuits is not None
    assert profile.circuits.confirmed
    assert profile.circuits.unit_ids_per_module == 36


@pytest.mark.parametrize(
    ("model", "confirmed"),
    [
        ("chint-ddsu666", {"voltage_a", "current_a", "power_active", "energy_active_import_total"}),
        ("eastron-sdm120", {"voltage_a", "current_a", "power_active", "energy_active_import_total"}),
        ("acrel-dtsy1352", set()),
        ("generic-water-valve", set()),
    ],
)
def test_only_documented_registers_are_confirmed(model: str, confirmed: set[str]) -> None:
    assert set(load_profile(model).confirmed_names()) == confirmed


def test_float_meters_read_input_registers() -> None:
    for model in ("chint-ddsu666", "eastron-sdm120"):
        profile = load_profile(model)
        assert {(r.function, r.type) for r in profile.registers} == {(4, RegisterType.FLOAT32)}
    assert load_profile("eastron-sdm120").serial.baud == 2400
    assert load_profile("chint-ddsu666").serial.baud == 9600


def test_control_lookup_names_the_supported_actions() -> None:
    with pytest.raises(KeyError, match=r"valve_open.*supported: trip, close"):
        control_writes(load_profile("acrel-ddsy1352"), "valve_open")
    with pytest.raises(KeyError, match="supported: none"):
        control_writes(load_profile("chint-ddsu666"), "trip")


@pytest.mark.parametrize("model", ["no-such-meter", "../acrel-ddsy1352", "Acrel-DDSY1352", ""])
def test_unknown_profile_names_are_refused(model: str) -> None:
    with pytest.raises(ProfileError):
        load_profile(model)


def test_the_valid_fixture_is_valid() -> None:
    profile = parse_profile(VALID, source="test.yaml")
    assert profile.register("voltage_a").scale == Decimal("0.1")
    assert profile.register("voltage_a").address == 0x000B
    assert control_writes(profile, "trip") == [(16, 0x57, [1, 1])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_variant("type: uint16", "type: uint64"), r"test\.yaml: registers\[0\] \(voltage_a\)\.type: Input should be"),
        (_variant("address: 0x000B", "address: 0x0001"), r"energy_active_import_total .*voltage_a .*overlap"),
        (
            _variant(", confirmed: true, source: manual}", "}"),
            r"registers\[0\] \(voltage_a\)\.confirmed: Field required",
        ),
        (_variant("vendor: Test\n", ""), r"test\.yaml: vendor: Field required"),
        (_variant('scale: "0.1"', "scale: 0.1"), r"\.scale: .*quoted decimal"),
        (_variant('scale: "0.1"', 'scale: "0"'), r"\.scale: .*non-zero"),
        (_variant("address: 0x000B", "address: 0011"), r"\.address: .*YAML integer"),
        (_variant("address: 0x000B", "address: '0x0B'"), r"\.address: .*YAML integer"),
        (_variant("address: 0x000B", "address: 0x10000"), r"\.address: Input should be less than or equal"),
        (_variant("unit: V", "unit: kV"), r"voltage_a is canonical and must be in 'V'"),
        (_variant("source: manual", "source: ''"), r"confirmed but names no source"),
        (_variant("function: 3, type: uint16", "function: 5, type: uint16"), r"\.function: Input should be 3 or 4"),
        (
            _variant("name: voltage_a", "name: energy_active_import_total").replace("unit: V,", "unit: kWh,"),
            r"duplicate register names: energy_active_import_total",
        ),
        (_variant("unit: V,", "unit: V, sacle: 2,"), r"\.sacle: Extra inputs are not permitted"),
        (
            _variant("function: 16, address", "function: 6, address"),
            r"controls\[0\] \(trip\)\.writes\[0\]: .*exactly one",
        ),
        (_variant("values: [1, 1]", "values: [1, 70000]"), r"writes\[0\]\.values\[1\]: Input should be less than"),
        (_variant("parity: E", "parity: X"), r"serial\.parity: Input should be"),
        (_variant("max_registers_per_read: 20", "max_registers_per_read: 126"), r"max_registers_per_read: Input"),
        (_variant("max_registers_per_read: 20", "max_registers_per_read: 1"), r"larger than max_registers_per_read"),
        (_variant("model: test-meter", "model: Test Meter"), r"model: String should match pattern"),
        (_variant("name: voltage_a", "name: Voltage A"), r"registers\[0\] \(Voltage A\)\.name: String should match"),
        ("registers: [\n", r"test\.yaml: not valid YAML"),
        ("- just a list\n", r"test\.yaml: a profile is a mapping"),
    ],
    ids=[
        "bad-type",
        "overlap",
        "missing-confirmed",
        "missing-vendor",
        "float-scale",
        "zero-scale",
        "zero-padded-address",
        "quoted-address",
        "address-range",
        "canonical-unit",
        "confirmed-without-source",
        "bad-function",
        "duplicate-name",
        "typo-key",
        "function-06-two-values",
        "word-range",
        "parity",
        "max-read",
        "register-larger-than-max-read",
        "model-name",
        "register-name",
        "not-yaml",
        "not-a-mapping",
    ],
)
def test_malformed_profiles_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(text, source="test.yaml")


def test_state_registers_are_integers() -> None:
    text = _variant("name: voltage_a", "name: relay_open").replace("unit: V,", 'unit: "",')
    with pytest.raises(ProfileError, match="relay_open is a state code"):
        parse_profile(text, source="test.yaml")


def test_registers_inherit_the_profile_word_order_unless_they_set_their_own() -> None:
    text = VALID.replace("max_registers_per_read: 20\n", "max_registers_per_read: 20\nword_order: little\n")
    assert parse_profile(text).register("energy_active_import_total").word_order is WordOrder.LITTLE
    text = text.replace("unit: kWh,", "unit: kWh, word_order: big,")
    assert parse_profile(text).register("energy_active_import_total").word_order is WordOrder.BIG
    assert parse_profile(VALID).register("energy_active_import_total").word_order is WordOrder.BIG


def test_a_bad_profile_word_order_is_reported_once() -> None:
    text = VALID.replace("max_registers_per_read: 20\n", "max_registers_per_read: 20\nword_order: middle\n")
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, source="test.yaml")
    assert str(caught.value).count("word_order") == 1


def test_profile_integers_are_hex_or_plain_decimal_only() -> None:
    # Plain YAML 1.1 would read 0010 as octal 8 and 1:30 as 90; a profile must never do either silently.
    assert yaml.safe_load("a: 0010")["a"] == 8
    assert parse_profile(VALID.replace("values: [1, 1]", "values: [0x0010, 16]")).controls[0].writes[0].values == (
        16,
        16,
    )
    with pytest.raises(ProfileError, match="values"):
        parse_profile(VALID.replace("values: [1, 1]", "values: [1:30, 1]"))
