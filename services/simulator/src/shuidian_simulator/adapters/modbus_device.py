"""Modbus behaviour of simulated meters, driven by the collector's device profiles (YAML data files):
registers with their type, word order and scale, and the control writes (relay, valve) a model obeys.

Two gateway flavours share one device model: Modbus RTU over TCP (a transparent RS-485 tunnel, CRC and
all) and Modbus TCP (MBAP header, the gateway converts to RTU on its RS-485 side). Either way the line
is timed as RTU: frame characters at the bus baud rate plus the 3.5-character silent interval.
A multi-circuit module (ADF400L) is one meter per circuit, each at its own unit id; a three-phase
circuit answers on its id and the next two.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from functools import cache, partial

from shuidian_protocols.errors import ValueEncodingError
from shuidian_protocols.modbus_profiles import DeviceProfile, RegisterSpec, encode_register, load_profile
from shuidian_simulator.adapters.bus import LineDiscipline, SimBus
from shuidian_simulator.adapters.dlt645_meter import POWER_FACTOR, VOLTAGE
from shuidian_simulator.domain.meter import SimMeter

LEAKAGE_ALARM_MA = Decimal(30)  # the meter's own leakage alarm: the rated operating current of household RCDs

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE = 1, 2, 3, 4
_MAX_READ = 125
_MBAP = 7  # transaction id, protocol id, length, unit id


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray, crc: int = 0xFFFF) -> int:
    """Modbus RTU CRC-16 (polynomial A001, initial FFFF); travels low byte first."""
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def silent_interval(baud: int) -> float:
    """3.5 characters of silence between frames; a fixed 1.75 ms above 19200 baud."""
    return 0.00175 if baud > 19200 else 3.5 * 11 / baud


RTU_LINE = LineDiscipline(
    corrupt=lambda frame: frame[:-1] + bytes([frame[-1] ^ 0xFF]),
    silent_interval=silent_interval,
)
# Modbus TCP has no checksum; "bad checksum" spoils the MBAP length instead. On the line behind the
# gateway the frame is RTU: the 7-byte MBAP becomes a unit id, and 2 CRC bytes are added.
TCP_LINE = LineDiscipline(
    corrupt=lambda frame: frame[:4] + ((int.from_bytes(frame[4:6], "big") + 1) & 0xFFFF).to_bytes(2, "big") + frame[6:],
    line_length=lambda frame: len(frame) - _MBAP + 3,
    silent_interval=silent_interval,
)


# ---------------------------------------------------------------- register image of a meter


@cache
def _profile(model: str) -> DeviceProfile:
    return load_profile(model)


def readings(meter: SimMeter) -> dict[str, Decimal]:
    """Canonical readings of the meter now, by profile register name."""
    meter.advance()
    on = meter.supply_on
    rate = meter.rate_now()
    voltage = VOLTAGE if on else Decimal(0)
    current = rate * 1000 / (VOLTAGE * POWER_FACTOR) / (meter.spec.phases if on else 1)
    values = {
        "energy_active_import_total": meter.register,
        **{f"energy_tariff_{i + 1}": t for i, t in enumerate(meter.tariff_registers)},
        **{f"voltage_{p}": voltage for p in "abc"},
        **{f"current_{p}": current for p in "abc"},
        "power_active": rate,
        "power_apparent": rate / POWER_FACTOR,
        "power_factor": POWER_FACTOR if on else Decimal(0),
        "frequency": Decimal("50.00"),
        "relay_open": Decimal(int(meter.relay_open)),
        "water_volume_total": meter.register,
        "water_flow_rate": rate,
        "valve_state": Decimal(int(meter.relay_open)),
        "residual_current": meter.residual_current_ma,
        "leakage_alarm": Decimal(int(meter.residual_current_ma >= LEAKAGE_ALARM_MA)),
    }
    if meter.remaining_money is not None:
        values["balance_money"] = meter.remaining_money
    return values


def _words(spec: RegisterSpec, value: Decimal) -> list[int]:
    """The register's words for `value`, truncated to the register's resolution as a meter shows it."""
    if spec.type != "float32":
        value = (value / spec.scale).to_integral_value(ROUND_DOWN) * spec.scale
    try:
        return encode_register(spec, value)
    except ValueEncodingError:
        return [0xFFFF] * spec.size  # out of range for the register: what an overflowing meter shows


def read_registers(meter: SimMeter, profile: DeviceProfile, function: int, start: int, count: int) -> bytes:
    """Reply PDU to a 03/04 read: register bytes, or an exception PDU."""
    if not 1 <= count <= min(_MAX_READ, profile.max_registers_per_read):
        return bytes([function | 0x80, ILLEGAL_VALUE])
    end = start + count
    specs = [s for s in profile.registers if s.function == function and s.address < end and s.end > start]
    if not specs:
        return bytes([function | 0x80, ILLEGAL_ADDRESS])
    values = readings(meter)
    image = [0] * count  # unmapped addresses inside a read answer 0, as Acrel meters do for their gaps
    for spec in specs:
        value = values.get(spec.name)
        if value is None:
            continue
        for offset, word in enumerate(_words(spec, value)):
            if start <= spec.address + offset < end:
                image[spec.address + offset - start] = word
    return bytes([function, 2 * count]) + struct.pack(f">{count}H", *image)


def write_registers(meter: SimMeter, profile: DeviceProfile, function: int, address: int, values: list[int]) -> bytes:
    """Reply PDU to a 06/10H write: carry out the profile control it spells, or an exception PDU."""
    action = next(
        (
            c.action
            for c in profile.controls
            if len(c.writes) == 1
            and (c.writes[0].function, c.writes[0].address, list(c.writes[0].values)) == (function, address, values)
        ),
        None,
    )
    if action is None:
        in_control = any(w.address <= address < w.address + len(w.values) for c in profile.controls for w in c.writes)
        return bytes([function | 0x80, ILLEGAL_VALUE if in_control else ILLEGAL_ADDRESS])
    cuts_supply = action in ("trip", "valve_close")
    if cuts_supply and meter.keep_power:
        return bytes([function | 0x80, DEVICE_FAILURE])  # keep-power (保电) refuses trips
    if action in ("trip", "close", "valve_open", "valve_close"):
        meter.command_relay(cuts_supply)
    log.info("meter %s: modbus control %s", meter.spec.id, action)
    if function == 6:
        return bytes([6]) + struct.pack(">HH", address, values[0])
    return bytes([16]) + struct.pack(">HH", address, len(values))


def answer_pdu(meter: SimMeter, pdu: bytes) -> bytes:
    """Reply PDU for a request PDU addressed to `meter`."""
    profile = _profile(meter.spec.model)
    function = pdu[0]
    try:
        if function in (3, 4):
            start, count = struct.unpack(">HH", pdu[1:5])
            return read_registers(meter, profile, function, start, count)
        if function == 6:
            address, value = struct.unpack(">HH", pdu[1:5])
            return write_registers(meter, profile, function, address, [value])
        if function == 16:
            address, count, size = struct.unpack(">HHB", pdu[1:6])
            if count < 1 or size != 2 * count or len(pdu) != 6 + size:
                return bytes([function | 0x80, ILLEGAL_VALUE])
            return write_registers(meter, profile, function, address, list(struct.unpack(f">{count}H", pdu[6:])))
    except struct.error:
        return bytes([function | 0x80, ILLEGAL_VALUE])
    return bytes([(function | 0x80) & 0xFF, ILLEGAL_FUNCTION])


def unit_meter(bus: SimBus, unit: int) -> SimMeter | None:
    """The meter (circuit) that answers unit id `unit`; unit 0 (broadcast) gets no answer."""
    if unit == 0:
        return None
    for meter in bus.meters.values():
        if meter.address.isdigit() and int(meter.address) <= unit < int(meter.address) + meter.spec.phases:
            return meter
    return None


# ---------------------------------------------------------------- framing


def _rtu_length(buf: bytes | bytearray) -> int | None:
    """Length of the RTU request starting at buf[0] for the functions whose length is fixed by the header."""
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return 9 + buf[6] if len(buf) > 6 else 9  # at least 9: wait for the byte count
    return None


def cut_rtu_requests(buf: bytearray) -> list[bytes]:
    """Take complete, CRC-valid RTU requests off the front of `buf`; line noise is skipped byte by byte."""
    frames: list[bytes] = []
    while len(buf) >= 4:
        length = _rtu_length(buf)
        if length is None:
            # A function without a fixed length: a frame is whatever prefix carries a valid CRC.
            length = _crc_prefix(buf)
            if not length:
                del buf[0]
                continue
        elif len(buf) < length:
            if not _complete_frame_after(buf):
                break  # wait for the rest of the frame
            del buf[0]  # a false start must not hold back a complete request behind it
            continue
        if not _crc_ok(buf[:length]):
            del buf[0]
            continue
        frames.append(bytes(buf[:length]))
        del buf[:length]
    return frames


def _complete_frame_after(buf: bytearray) -> bool:
    """Whether a complete, CRC-valid fixed-length request starts somewhere after buf[0]."""
    for start in range(1, len(buf) - 3):
        length = _rtu_length(buf[start:])
        if length is not None and start + length <= len(buf) and _crc_ok(buf[start : start + length]):
            return True
    return False


def _crc_prefix(buf: bytearray) -> int:
    """Length of the shortest prefix (4..256 bytes) that ends in its own valid CRC, or 0."""
    crc = crc16(buf[:2])
    for n in range(4, min(len(buf), 256) + 1):
        if crc == buf[n - 2] | buf[n - 1] << 8:
            return n
        crc = crc16(buf[n - 2 : n - 1], crc)
    return 0


def _crc_ok(frame: bytes | bytearray) -> bool:
    return crc16(bytes(frame[:-2])) == int.from_bytes(frame[-2:], "little")


def _rtu_reply(meter: SimMeter, unit: int, pdu: bytes) -> bytes:
    return rtu_frame(unit, answer_pdu(meter, pdu))


async def serve_rtu(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    buf = bytearray()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return
        buf += chunk
        for frame in cut_rtu_requests(buf):
            unit, pdu = frame[0], frame[1:-2]
            meter = unit_meter(bus, unit)
            reply: Callable[[], bytes | None] = _silent if meter is None else partial(_rtu_reply, meter, unit, pdu)
            await bus.transact(writer, frame, meter, reply)


def _tcp_reply(meter: SimMeter, header: bytes, unit: int, pdu: bytes) -> bytes:
    reply = answer_pdu(meter, pdu)
    return header[:4] + (len(reply) + 1).to_bytes(2, "big") + bytes([unit]) + reply


async def serve_tcp(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        header = await reader.readexactly(_MBAP)
        length = int.from_bytes(header[4:6], "big")
        if header[2:4] != b"\0\0" or not 2 <= length <= 254:
            log.warning("bus %s: not a Modbus TCP header %s; closing", bus.spec.id, header.hex(" "))
            return  # a gateway drops a connection it cannot frame
        pdu = await reader.readexactly(length - 1)
        unit = header[6]
        meter = unit_meter(bus, unit)
        reply: Callable[[], bytes | None] = _silent if meter is None else partial(_tcp_reply, meter, header, unit, pdu)
        await bus.transact(writer, header + pdu, meter, reply)


def _silent() -> None:
    return None
