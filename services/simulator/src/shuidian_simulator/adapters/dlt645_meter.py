"""DL/T 645 behaviour of a simulated electricity meter: the 2007 edition answers reads and obeys 1C relay
control; a 1997 bus answers the legacy read subset (2-byte DIs, no relay command)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal
from functools import partial

from shuidian_protocols import dlt645
from shuidian_protocols.common import bcd_encode
from shuidian_protocols.errors import ProtocolError
from shuidian_simulator.adapters.bus import SimBus
from shuidian_simulator.domain.meter import SimMeter

log = logging.getLogger(__name__)
VOLTAGE = Decimal("220.1")
POWER_FACTOR = Decimal("0.950")
FREQUENCY = Decimal("50.00")
OPEN_COVER_COUNT_DI = 0x03300D00  # 开表盖总次数, XXXXXX (3 B BCD): not in the codec's catalogue
MAX_REGISTER = Decimal("999999.99")


def _current(meter: SimMeter) -> Decimal:
    return (meter.power_kw() * 1000 / (VOLTAGE * POWER_FACTOR)).quantize(Decimal("0.001"))


def value_of(meter: SimMeter, di: int) -> dlt645.Value | None:
    """The meter's answer for a data identifier, or None when it has no such data."""
    meter.advance()
    voltage = VOLTAGE if meter.supply_on else Decimal(0)
    if di in (0x00000000, 0x00010000):
        return meter.register
    if 0x00010100 <= di <= 0x00010400 and di & 0xFF == 0:
        return meter.tariff_registers[(di >> 8 & 0xFF) - 1]
    if di == 0x0001FF00:
        return (meter.register, *meter.tariff_registers)
    if di == 0x02010100:
        return voltage
    if di == 0x0201FF00:
        return (voltage, Decimal(0), Decimal(0))
    if di == 0x02020100:
        return _current(meter)
    if di == 0x02030000:
        return min(meter.power_kw(), Decimal("79.9999"))
    if di == 0x02060000:
        return POWER_FACTOR if meter.supply_on else Decimal(0)
    if di == 0x02800002:
        return FREQUENCY
    if meter.money is not None:
        if di == 0x00900200:
            return meter.remaining_money
        if di == 0x00900201:
            return meter.overdraft_money
        remaining_kwh = (meter.remaining_money or Decimal(0)) / meter.spec.price
        if di == 0x00900100:
            return min(remaining_kwh, MAX_REGISTER).quantize(Decimal("0.01"))
        if di == 0x00900101:
            return (meter.overdraft_money / meter.spec.price).quantize(Decimal("0.01"))
    if di == 0x04000503:
        meter_type = dlt645.MeterType.MONEY_PREPAID if meter.money is not None else dlt645.MeterType.ORDINARY
        return dlt645.StatusWord3(
            relay_open=meter.relay_open,
            relay_commanded_trip=meter.relay_commanded_trip,
            pre_trip_alarm=meter.pre_trip_alarm,
            meter_type=meter_type,
            keep_power=meter.keep_power,
        )
    if di == 0x04000501:
        low = meter.battery_low
        return dlt645.StatusWord1(clock_battery_low=low, reading_battery_low=low)
    if di == 0x04000101:
        return meter.local_clock().date()
    if di == 0x04000102:
        return meter.local_clock().time().replace(microsecond=0)
    return None


def answer(meter: SimMeter, request: dlt645.Request) -> bytes | None:
    address = meter.address
    if isinstance(request, dlt645.ReadRequest):
        if request.di == OPEN_COVER_COUNT_DI:
            return dlt645.encode_read_reply(address, request.di, bcd_encode(meter.tamper_count, 3))
        value = value_of(meter, request.di)
        if value is None:
            return dlt645.encode_error_reply(address, dlt645.Function.READ, dlt645.ErrorBits.NO_DATA)
        return dlt645.encode_read_reply(address, request.di, dlt645.encode_value(request.di, value))
    if isinstance(request, dlt645.ReadAddressRequest):
        return dlt645.encode_address_reply(address)
    if isinstance(request, dlt645.RelayControlRequest):
        return relay_control(meter, request)
    if isinstance(request, dlt645.BroadcastTime):
        return None
    function = dlt645.Function.WRITE if isinstance(request, dlt645.WriteRequest) else dlt645.Function.READ_FOLLOWUP
    return dlt645.encode_error_reply(address, function, dlt645.ErrorBits.UNAUTHORISED)


def relay_control(meter: SimMeter, request: dlt645.RelayControlRequest) -> bytes:
    address = meter.address
    function = dlt645.Function.RELAY_CONTROL
    if request.expires_at < meter.local_clock():
        # The standard has no dedicated bit for an expired command: meters answer "other error".
        return dlt645.encode_error_reply(address, function, dlt645.ErrorBits.OTHER)
    command = request.command
    if command is dlt645.RelayCommand.TRIP and meter.keep_power:
        # A meter in keep-power (保电) refuses trips.
        return dlt645.encode_error_reply(address, function, dlt645.ErrorBits.UNAUTHORISED)
    if command is dlt645.RelayCommand.TRIP:
        meter.command_relay(True)
    elif command is dlt645.RelayCommand.DIRECT_CLOSE:
        meter.command_relay(False)
    elif command is dlt645.RelayCommand.CLOSE_ALLOWED:
        # Closing is left to the tenant's button (the control API's press-button).
        meter.relay_commanded_trip = False
    elif command in (dlt645.RelayCommand.ALARM_ON, dlt645.RelayCommand.ALARM_OFF):
        meter.pre_trip_alarm = command is dlt645.RelayCommand.ALARM_ON
    elif command is dlt645.RelayCommand.KEEP_POWER_ON:
        meter.keep_power = True
    elif command is dlt645.RelayCommand.KEEP_POWER_OFF:
        meter.keep_power = False
    log.info("meter %s: relay command %s", meter.spec.id, command.name)
    return dlt645.encode_ack(address, function)


def answer_1997(meter: SimMeter, request: dlt645.ReadRequest1997) -> bytes:
    """The 1997 read subset: forward energy, phase-A voltage and current, power."""
    meter.advance()
    values = {
        0x9010: meter.register,
        0xB611: (VOLTAGE if meter.supply_on else Decimal(0)).quantize(Decimal(1)),
        0xB621: min(_current(meter), Decimal("99.99")).quantize(Decimal("0.01")),
        0xB630: min(meter.power_kw(), Decimal("79.9999")),
    }
    value = values.get(request.di)
    if value is None:
        return dlt645.encode_error_reply_1997(meter.address, dlt645.ErrorBits.NO_DATA)
    return dlt645.encode_read_reply_1997(meter.address, request.di, dlt645.encode_value_1997(request.di, value))


async def _serve(
    bus: SimBus,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    respond: Callable[[SimMeter, dlt645.Frame], Callable[[], bytes | None] | None],
) -> None:
    """Answer requests as they arrive; the wire log records each request frame as decoded
    (canonical form: four FE preamble bytes, as a standard master sends it)."""
    parser = dlt645.StreamParser()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return
        for frame in parser.feed(chunk):
            if frame.is_reply:
                continue
            raw = dlt645.encode_frame(frame)
            if frame.address == dlt645.BROADCAST_ADDRESS:
                _broadcast(bus, frame)
            meter = _addressed(bus, frame.address)
            reply = None if meter is None or frame.address == dlt645.BROADCAST_ADDRESS else respond(meter, frame)
            if meter is None or reply is None:
                await bus.transact(writer, raw, None, _silent)  # nobody answers, the line is still busy
                continue
            await bus.transact(writer, raw, meter, reply)


def _respond_2007(meter: SimMeter, frame: dlt645.Frame) -> Callable[[], bytes | None] | None:
    try:
        request = dlt645.decode_request(frame)
    except ProtocolError:
        return None  # a request the meter cannot parse gets no answer
    return partial(answer, meter, request)


def _respond_1997(meter: SimMeter, frame: dlt645.Frame) -> Callable[[], bytes | None] | None:
    try:
        request = dlt645.decode_request_1997(frame)
    except ProtocolError:
        return None
    return partial(answer_1997, meter, request)


async def serve_connection(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _serve(bus, reader, writer, _respond_2007)


async def serve_connection_1997(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _serve(bus, reader, writer, _respond_1997)


def _broadcast(bus: SimBus, frame: dlt645.Frame) -> None:
    """Every meter on the bus hears a broadcast; only broadcast time means anything to them."""
    try:
        request = dlt645.decode_request(frame)
    except ProtocolError:
        return
    if isinstance(request, dlt645.BroadcastTime):
        for meter in bus.meters.values():
            meter.set_clock(request.at)


def _silent() -> None:
    return None


def _addressed(bus: SimBus, address: str) -> SimMeter | None:
    if address == dlt645.WILDCARD_ADDRESS:
        return next(iter(bus.meters.values())) if len(bus.meters) == 1 else None
    return bus.meter_at(address)
