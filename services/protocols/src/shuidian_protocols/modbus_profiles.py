"""Modbus device profiles: per-model YAML register maps, read planning and pure register codecs."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from enum import StrEnum
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from itertools import pairwise
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from shuidian_protocols.errors import ProfileError, ValueEncodingError

__all__ = [
    "CANONICAL_UNITS",
    "MAX_UNIT_ID",
    "CircuitLayout",
    "ControlSpec",
    "DeviceProfile",
    "ProfileError",
    "ReadBlock",
    "RegisterSpec",
    "RegisterType",
    "SerialSpec",
    "WordOrder",
    "WriteSpec",
    "available_profiles",
    "circuit_unit_id",
    "control_writes",
    "decode_block",
    "decode_register",
    "encode_register",
    "encode_registers",
    "load_profile",
    "parse_profile",
    "plan_reads",
]

MAX_UNIT_ID = 247  # Modbus unit ids 1..247; 0 is broadcast, 248..255 reserved
_MAX_READ = 125  # registers per 03/04 request the protocol allows
_MAX_WRITE = 123  # registers per 10H request the protocol allows
_PACKAGE = "shuidian_protocols"
_PROFILE_DIR = "profiles"

# Canonical readings and the unit their value is in after scaling: a profile that uses one of these names must
# scale into this unit (Eastron's W becomes kW with scale 0.001), so consumers never convert per model.
# State registers: relay_open is 1 when the relay is open (supply cut) and 0 when closed; valve_state is 0 open,
# 1 closed, anything else abnormal (the CJ/T 188 valve codes); leakage_alarm is 0 normal, anything else leakage (the
# reading is flagged, the code not published).
CANONICAL_UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "energy_active_import_total": "kWh",
        **{f"energy_tariff_{tariff}": "kWh" for tariff in range(1, 5)},  # 尖 峰 平 谷
        **{f"voltage_{phase}": "V" for phase in "abc"},
        **{f"current_{phase}": "A" for phase in "abc"},
        "power_active": "kW",
        "power_apparent": "kVA",
        "power_factor": "",
        "frequency": "Hz",
        "relay_open": "",
        "balance_money": "CNY",
        "water_volume_total": "m3",
        "water_flow_rate": "m3/h",
        "valve_state": "",
        "residual_current": "mA",  # 剩余电流 (earth leakage), of meters with residual-current measurement
        "leakage_alarm": "",  # 漏电报警: nonzero when the meter's residual-current protection warns or tripped
        # Parameters (registers a profile marks `writable`), the same names as the DL/T 645 parameter writes.
        "alarm_money_1": "CNY",
        "alarm_money_2": "CNY",
        "overdraft_money_limit": "CNY",
        "power_limit": "kW",
    }
)
_STATE_REGISTERS = frozenset({"relay_open", "valve_state", "leakage_alarm"})

# Decimal arithmetic wide enough that scaling a 32-bit register or a float32's 9 digits never rounds.
_EXACT = Context(prec=60)


class RegisterType(StrEnum):
    """How a value is laid out in 16-bit registers."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"  # IEEE 754 single precision

    @property
    def size(self) -> int:
        """Registers the value occupies."""
        return 1 if self in (RegisterType.UINT16, RegisterType.INT16) else 2


class WordOrder(StrEnum):
    """Order of the two registers of a 32-bit value; bytes inside a register are always big-endian."""

    BIG = "big"  # most significant register first (ABCD)
    LITTLE = "little"  # least significant register first (CDAB)


_INTEGER_RANGES: Final[Mapping[RegisterType, tuple[int, int]]] = MappingProxyType(
    {
        RegisterType.UINT16: (0, 0xFFFF),
        RegisterType.INT16: (-0x8000, 0x7FFF),
        RegisterType.UINT32: (0, 0xFFFF_FFFF),
        RegisterType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
    }
)

_Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
_Model = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
_Address = Annotated[int, Field(strict=True, ge=0, le=0xFFFF)]
_Word = Annotated[int, Field(strict=True, ge=0, le=0xFFFF)]


def _integer_address(value: Any) -> Any:
    # A quoted or zero-padded address (`0010`) reaches us as a string; guessing hex or decimal is how a profile
    # ends up reading the wrong register, so ask for an unambiguous integer instead.
    if isinstance(value, str):
        raise ValueError(f"address {value!r} must be a YAML integer (0x000B or 11), not a quoted or zero-padded string")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegisterSpec(_Frozen):
    """One reading: where it lives, how it is encoded, and how sure we are of that."""

    name: _Name
    address: _Address
    function: Literal[3, 4]
    type: RegisterType
    word_order: WordOrder = WordOrder.BIG
    scale: Decimal = Decimal(1)  # value = raw × scale, in `unit`
    unit: str = ""
    confirmed: bool
    source: str = ""
    note: str = ""
    # A parameter a parameter_write may set (function 06 / 10H); only written when also `confirmed`.
    writable: bool = False

    _check_address = field_validator("address", mode="before")(_integer_address)

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_is_exact(cls, value: Any) -> Any:
        # YAML reads 0.01 as a binary float; the scale must be the exact decimal written in the manual.
        if isinstance(value, bool | float):
            raise ValueError(f"scale {value!r} must be a quoted decimal string such as '0.01' or an integer")
        return value

    @field_validator("scale")
    @classmethod
    def _scale_is_usable(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value == 0:
            raise ValueError(f"scale {value} must be a finite, non-zero number")
        return value

    @model_validator(mode="after")
    def _check_semantics(self) -> RegisterSpec:
        expected = CANONICAL_UNITS.get(self.name)
        if expected is not None and self.unit != expected:
            raise ValueError(f"{self.name} is canonical and must be in {expected or 'no unit'!r}, not {self.unit!r}")
        if self.name in _STATE_REGISTERS and (self.type is RegisterType.FLOAT32 or self.scale != 1):
            raise ValueError(f"{self.name} is a state code: an integer type with scale 1")
        if self.confirmed and not self.source:
            raise ValueError(f"{self.name} is marked confirmed but names no source")
        if self.writable and (self.function != 3 or self.name in _STATE_REGISTERS):
            raise ValueError(f"{self.name}: only holding registers (function 3) that are not state codes are writable")
        return self

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def end(self) -> int:
        """First address after the register."""
        return self.address + self.size


class WriteSpec(_Frozen):
    """One register write: function 06 (one register) or 10H / 16 (several)."""

    function: Literal[6, 16]
    address: _Address
    values: Annotated[tuple[_Word, ...], Field(min_length=1, max_length=_MAX_WRITE)]

    _check_address = field_validator("address", mode="before")(_integer_address)

    @model_validator(mode="after")
    def _check_count(self) -> WriteSpec:
        if self.function == 6 and len(self.values) != 1:
            raise ValueError(f"function 06 writes exactly one register, not {len(self.values)}")
        if self.address + len(self.values) - 1 > 0xFFFF:
            raise ValueError("write runs past register FFFFH")
        return self


class ControlSpec(_Frozen):
    """A command (trip, close, valve_open, valve_close …) as the register writes that carry it out, in order."""

    action: _Name
    writes: Annotated[tuple[WriteSpec, ...], Field(min_length=1)]
    confirmed: bool
    source: str = ""
    note: str = ""

    @model_validator(mode="after")
    def _check_source(self) -> ControlSpec:
        if self.confirmed and not self.source:
            raise ValueError(f"control {self.action} is marked confirmed but names no source")
        return self


class SerialSpec(_Frozen):
    """Factory serial settings (pymodbus spelling of parity)."""

    baud: Annotated[int, Field(ge=300, le=115200)]
    parity: Literal["N", "E", "O"]
    data_bits: Literal[7, 8] = 8
    stop_bits: Literal[1, 2] = 1
    confirmed: bool
    note: str = ""


class CircuitLayout(_Frozen):
    """How a multi-circuit module spreads its circuits over Modbus unit ids (one id per phase of a circuit)."""

    first_unit_id: Annotated[int, Field(ge=1, le=MAX_UNIT_ID)] = 1
    unit_ids_per_module: Annotated[int, Field(ge=1, le=MAX_UNIT_ID)]
    single_phase_unit_ids: Annotated[int, Field(ge=1)] = 1
    three_phase_unit_ids: Annotated[int, Field(ge=1)] = 3
    confirmed: bool
    source: str = ""
    note: str = ""

    @model_validator(mode="after")
    def _check_division(self) -> CircuitLayout:
        for per_circuit in (self.single_phase_unit_ids, self.three_phase_unit_ids):
            if self.unit_ids_per_module % per_circuit:
                raise ValueError(f"{self.unit_ids_per_module} unit ids per module do not divide into {per_circuit}s")
        return self


class DeviceProfile(_Frozen):
    """Everything the collector needs to talk Modbus to one meter model."""

    model: _Model
    vendor: str
    description: str
    kind: Literal["electricity", "water"]
    phases: Literal[1, 3] | None = None
    serial: SerialSpec
    max_registers_per_read: Annotated[int, Field(ge=1, le=_MAX_READ)]
    # Unrequested registers a coalesced read may span: reading a few unused words costs less on the bus than
    # another request, but some meters answer an exception for unmapped addresses (set 0 for those).
    max_gap: Annotated[int, Field(ge=0, le=_MAX_READ)] = 4
    word_order: WordOrder = WordOrder.BIG  # default for the 32-bit registers that do not set their own
    registers: Annotated[tuple[RegisterSpec, ...], Field(min_length=1)]
    controls: tuple[ControlSpec, ...] = ()
    circuits: CircuitLayout | None = None
    # How patient to be with this model (a slow meter or radio link): override the bus's timeout and retries.
    timeout_ms: Annotated[int, Field(ge=50, le=30_000)] | None = None
    retries: Annotated[int, Field(ge=0, le=5)] | None = None
    notes: tuple[str, ...] = ()

    _registers: dict[str, RegisterSpec] = PrivateAttr(default_factory=dict)
    _controls: dict[str, ControlSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _inherit_word_order(cls, data: Any) -> Any:
        # Only a valid default is inherited, so a bad profile-level value is reported once, not per register.
        default = data.get("word_order", WordOrder.BIG) if isinstance(data, dict) else None
        if default in tuple(WordOrder) and isinstance(data.get("registers"), list):
            registers = [{"word_order": default, **r} if isinstance(r, dict) else r for r in data["registers"]]
            data = {**data, "registers": registers}
        return data

    @model_validator(mode="after")
    def _check_layout(self) -> DeviceProfile:
        for kind, names in (
            ("register", [r.name for r in self.registers]),
            ("control", [c.action for c in self.controls]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"duplicate {kind} names: {', '.join(duplicates)}")
        for function in (3, 4):
            ordered = sorted((r for r in self.registers if r.function == function), key=lambda r: r.address)
            for before, after in pairwise(ordered):
                if after.address < before.end:
                    raise ValueError(
                        f"registers {before.name} ({before.address:04X}H, {before.size} words) and {after.name} "
                        f"({after.address:04X}H) overlap"
                    )
        for register in self.registers:
            if register.end - 1 > 0xFFFF:
                raise ValueError(f"register {register.name} runs past FFFFH")
            if register.size > self.max_registers_per_read:
                raise ValueError(f"register {register.name} is larger than max_registers_per_read")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._registers.update((r.name, r) for r in self.registers)
        self._controls.update((c.action, c) for c in self.controls)

    def register(self, name: str) -> RegisterSpec:
        """The register called `name`; KeyError names the model when it has none."""
        try:
            return self._registers[name]
        except KeyError:
            raise KeyError(f"{self.model} has no register {name!r}") from None

    def control(self, action: str) -> ControlSpec:
        """The control for `action`; KeyError lists the actions the model supports."""
        try:
            return self._controls[action]
        except KeyError:
            supported = ", ".join(self._controls) or "none"
            raise KeyError(f"{self.model} has no control {action!r} (supported: {supported})") from None

    def confirmed_names(self) -> list[str]:
        """Registers whose address and encoding come from a source we trust."""
        return [r.name for r in self.registers if r.confirmed]


# ---------------------------------------------------------------- loading


class _ProfileLoader(yaml.SafeLoader):
    """SafeLoader whose integers are only plain decimal or 0x hex (YAML 1.1 reads `0010` as octal 8)."""


_INT_TAG = "tag:yaml.org,2002:int"
_ProfileLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ProfileLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)


def _field_path(loc: tuple[int | str, ...], data: Any) -> str:
    """`registers[3] (voltage_a).type` from a pydantic error location, naming list items where possible."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int):
            label = f"[{key}]"
            item = node[key] if isinstance(node, list) and 0 <= key < len(node) else None
            if isinstance(item, dict):
                name = item.get("name", item.get("action"))
                if isinstance(name, str):
                    label += f" ({name})"
            parts.append(label)
            node = item
        else:
            parts.append(f".{key}" if parts else key)
            node = node.get(key) if isinstance(node, dict) else None
    return "".join(parts)


def parse_profile(text: str, *, source: str = "<profile>") -> DeviceProfile:
    """Validate profile YAML; every problem is a ProfileError naming `source` and the field."""
    try:
        data = yaml.load(text, Loader=_ProfileLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ProfileError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of fields, not {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            path = _field_path(error["loc"], data)
            problems.append(f"{path}: {error['msg']}" if path else str(error["msg"]))
        raise ProfileError(f"{source}: " + "; ".join(problems)) from err


def _profile_dir() -> Traversable:
    return resources.files(_PACKAGE).joinpath(_PROFILE_DIR)


def available_profiles() -> list[str]:
    """Model names of the packaged profiles, e.g. 'acrel-ddsy1352'."""
    return sorted(
        entry.name.removesuffix(".yaml") for entry in _profile_dir().iterdir() if entry.name.endswith(".yaml")
    )


@cache
def load_profile(model: str) -> DeviceProfile:
    """The packaged profile for `model` (the file name without .yaml), validated once and cached."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", model):
        raise ProfileError(f"{model!r} is not a profile name (lower-case letters, digits and dashes)")
    source = f"{_PROFILE_DIR}/{model}.yaml"
    entry = _profile_dir().joinpath(f"{model}.yaml")
    if not entry.is_file():
        raise ProfileError(f"{source}: no such profile; available: {', '.join(available_profiles())}")
    profile = parse_profile(entry.read_text(encoding="utf-8"), source=source)
    if profile.model != model:
        raise ProfileError(f"{source}: model: {profile.model!r} does not match the file name")
    return profile


# ---------------------------------------------------------------- register codec


def _float32_to_decimal(raw: bytes, name: str) -> Decimal:
    """The shortest decimal that reads back as the same float32 (at most 9 significant digits).

    A float32 holds about 7 significant digits; its exact binary value (230.1 is 230.100006103515625) is noise,
    so we keep the shortest decimal string that converts back to the identical bits, as numpy's repr does.
    """
    (value,) = struct.unpack(">f", raw)
    if not math.isfinite(value):
        raise ValueEncodingError(f"{name}: float32 {raw.hex()} is not a finite number")
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if struct.pack(">f", float(text)) != raw:
                continue
        except OverflowError:
            continue
        number = Decimal(text)
        # `2.3e+02` would keep a positive exponent (Decimal('2.3E+2')); an integer reads better as 230.
        return Decimal(int(number)) if number == number.to_integral_value() else number
    raise AssertionError("9 significant digits always round-trip a float32")  # pragma: no cover


def decode_register(spec: RegisterSpec, words: Sequence[int]) -> Decimal:
    """The scaled value of one register from its raw 16-bit words."""
    if len(words) != spec.size:
        raise ValueEncodingError(f"{spec.name}: {spec.type} needs {spec.size} registers, got {len(words)}")
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise ValueEncodingError(f"{spec.name}: register values {list(words)} are not all 16-bit")
    ordered = list(words) if spec.word_order is WordOrder.BIG else list(reversed(words))
    raw = 0
    for word in ordered:
        raw = raw << 16 | word
    match spec.type:
        case RegisterType.FLOAT32:
            number = _float32_to_decimal(raw.to_bytes(4, "big"), spec.name)
        case RegisterType.INT16 | RegisterType.INT32:
            bits = 16 * spec.size
            number = Decimal(raw - (1 << bits) if raw >> (bits - 1) else raw)
        case _:
            number = Decimal(raw)
    return _EXACT.multiply(number, spec.scale)


def encode_register(spec: RegisterSpec, value: Decimal) -> list[int]:
    """The raw 16-bit words a meter would hold for `value` (integers exact only; float32 rounds to nearest)."""
    try:
        number = _EXACT.divide(Decimal(value), spec.scale)
    except (InvalidOperation, TypeError) as err:
        raise ValueEncodingError(f"{spec.name}: {value!r} is not a number") from err
    if not number.is_finite():
        raise ValueEncodingError(f"{spec.name}: {value} is not a finite number")
    if spec.type is RegisterType.FLOAT32:
        try:
            raw = int.from_bytes(struct.pack(">f", float(number)), "big")
        except OverflowError as err:
            raise ValueEncodingError(f"{spec.name}: {value} is out of float32 range") from err
    else:
        if number != number.to_integral_value():
            raise ValueEncodingError(f"{spec.name}: {value} is not a multiple of the scale {spec.scale}")
        integer = int(number)
        low, high = _INTEGER_RANGES[spec.type]
        if not low <= integer <= high:
            raise ValueEncodingError(f"{spec.name}: {value} does not fit {spec.type} at scale {spec.scale}")
        raw = integer & ((1 << (16 * spec.size)) - 1)  # two's complement for the signed types
    words = [raw >> (16 * shift) & 0xFFFF for shift in reversed(range(spec.size))]
    return words if spec.word_order is WordOrder.BIG else list(reversed(words))


# ---------------------------------------------------------------- reads, writes, controls


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request (function 03 or 04) and the registers its answer carries, in address order."""

    function: int
    start: int
    count: int
    names: tuple[str, ...]


def plan_reads(profile: DeviceProfile, names: Iterable[str] | None = None) -> list[ReadBlock]:
    """Coalesce registers into as few reads as the profile's max count and max gap allow."""
    specs = profile.registers if names is None else tuple(profile.register(n) for n in dict.fromkeys(names))
    blocks: list[ReadBlock] = []
    for function in sorted({spec.function for spec in specs}):
        start = end = 0
        members: list[str] = []
        # Greedy left-to-right packing is optimal here: whether a register can join the open block only gets
        # harder as the block grows, so closing a block early never saves a request.
        for spec in sorted((s for s in specs if s.function == function), key=lambda s: s.address):
            if members and spec.address - end <= profile.max_gap and spec.end - start <= profile.max_registers_per_read:
                members.append(spec.name)
                end = spec.end
                continue
            if members:
                blocks.append(ReadBlock(function, start, end - start, tuple(members)))
            start, end, members = spec.address, spec.end, [spec.name]
        if members:
            blocks.append(ReadBlock(function, start, end - start, tuple(members)))
    return blocks


def decode_block(profile: DeviceProfile, block: ReadBlock, registers: Sequence[int]) -> dict[str, Decimal]:
    """Scaled readings for every register of a block from the words its read returned."""
    if len(registers) != block.count:
        raise ValueEncodingError(f"read of {block.count} registers at {block.start:04X}H returned {len(registers)}")
    readings: dict[str, Decimal] = {}
    for name in block.names:
        spec = profile.register(name)
        offset = spec.address - block.start
        if spec.function != block.function or offset < 0 or offset + spec.size > block.count:
            raise ValueError(f"{profile.model}: register {name} is not inside the block {block}")
        readings[name] = decode_register(spec, registers[offset : offset + spec.size])
    return readings


def encode_registers(profile: DeviceProfile, values: Mapping[str, Decimal]) -> dict[tuple[int, int], int]:
    """(function, address) → 16-bit word for the given readings: what a simulated meter serves."""
    words: dict[tuple[int, int], int] = {}
    for name, value in values.items():
        spec = profile.register(name)
        for offset, word in enumerate(encode_register(spec, value)):
            words[spec.function, spec.address + offset] = word
    return words


def control_writes(profile: DeviceProfile, action: str) -> list[tuple[int, int, list[int]]]:
    """(function, address, values) writes that perform `action`; check `profile.control(action).confirmed` first."""
    return [(write.function, write.address, list(write.values)) for write in profile.control(action).writes]


def circuit_unit_id(profile: DeviceProfile, module: int, circuit: int, *, phases: Literal[1, 3] = 1) -> int:
    """Modbus unit id of a circuit of a multi-circuit module (module and circuit count from 1).

    A three-phase circuit occupies that id and the next two.
    """
    layout = profile.circuits
    if layout is None:
        raise ValueError(f"{profile.model} is not a multi-circuit module")
    per_circuit = layout.single_phase_unit_ids if phases == 1 else layout.three_phase_unit_ids
    circuits = layout.unit_ids_per_module // per_circuit
    if module < 1:
        raise ValueError(f"module {module} does not exist: modules count from 1")
    if not 1 <= circuit <= circuits:
        raise ValueError(f"circuit {circuit} is outside 1..{circuits} for {phases}-phase circuits")
    unit_id = layout.first_unit_id + (module - 1) * layout.unit_ids_per_module + (circuit - 1) * per_circuit
    if unit_id + per_circuit - 1 > MAX_UNIT_ID:
        raise ValueError(f"module {module} circuit {circuit} would need unit id {unit_id}, beyond {MAX_UNIT_ID}")
    return unit_id
