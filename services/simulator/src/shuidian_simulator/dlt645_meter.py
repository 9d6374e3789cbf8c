"""DL/T 645-2007 behaviour of a simulated electricity meter: answers reads, obeys 1C relay control."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from functools import partial

from shuidian_collector.protocols import dlt645
from shuidian_collector.protocols.common import ProtocolError
from shuidian_simulator.bus import SimBus
from shuidian_simulator.estate import FaultKind
from shuidian_simulator.meter import SimMeter

log = logging.getLogger(__name__)
RELAY_DELAY_S = 0.15  # a latching relay moves within a few hundred milliseconds


def value_of(meter: SimMeter, di: int) -> dlt645.Value | None:
    """The meter's answer for a data identifier, or None when it has no such data."""
    meter.advance()
    if di in (0x00000000, 0x00010000):
        return meter.register
    if 0x00010100 <= di <= 0x00010400 and di & 0xFF == 0:
        return meter.tariff_registers[(di >> 8 & 0xFF) - 1]
    if di == 0x0001FF00:
        return (meter.register, *meter.tariff_registers)
    if di == 0x02010100:
        return Decimal("220.1") if meter.supply_on else Decimal("0")
    if di == 0x02030000:
        return meter.power_kw()
    if di == 0x02020100:
        return (meter.power_kw() * 1000 / Decimal("220.1")).quantize(Decimal("0.001"))
    if di == 0x00900200 and meter.remaining_money is not None:
        return meter.remaining_money
    if di == 0x04000503:
        meter_type = dlt645.MeterType.MONEY_PREPAID if meter.money is not None else dlt645.MeterType.ORDINARY
        return dlt645.StatusWord3(
            relay_open=meter.relay_open,
            relay_commanded_trip=meter.relay_commanded_trip,
            meter_type=meter_type,
            keep_power=meter.keep_power,
        )
    if di == 0x04000501:
        return dlt645.StatusWord1()
    if di == 0x04000101:
        return meter.local_clock().date()
    if di == 0x04000102:
        return meter.local_clock().time().replace(microsecond=0)
    return None


def answer(meter: SimMeter, request: dlt645.Request) -> bytes | None:
    address = meter.spec.address
    if isinstance(request, dlt645.ReadRequest):
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
    address = meter.spec.address
    function = dlt645.Function.RELAY_CONTROL
    if request.expires_at < meter.local_clock():
        return dlt645.encode_error_reply(address, function, dlt645.ErrorBits.OTHER)
    command = request.command
    if command is dlt645.RelayCommand.TRIP and meter.keep_power:
        # A meter in keep-power (保电) refuses trips.
        return dlt645.encode_error_reply(address, function, dlt645.ErrorBits.UNAUTHORISED)
    stuck = FaultKind.STUCK_RELAY in meter.faults
    loop = asyncio.get_running_loop()
    if command is dlt645.RelayCommand.TRIP:
        meter.relay_commanded_trip = True
        if not stuck:
            loop.call_later(RELAY_DELAY_S, meter.set_relay, True)
    elif command is dlt645.RelayCommand.DIRECT_CLOSE:
        meter.relay_commanded_trip = False
        if not stuck:
            loop.call_later(RELAY_DELAY_S, meter.set_relay, False)
    elif command is dlt645.RelayCommand.CLOSE_ALLOWED:
        # Closing is left to the tenant's button (the control API's press-button).
        meter.relay_commanded_trip = False
    elif command is dlt645.RelayCommand.KEEP_POWER_ON:
        meter.keep_power = True
    elif command is dlt645.RelayCommand.KEEP_POWER_OFF:
        meter.keep_power = False
    log.info("meter %s: relay command %s", meter.spec.id, command.name)
    return dlt645.encode_ack(address, function)


async def serve_connection(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            meter = _addressed(bus, frame.address)
            try:
                request = dlt645.decode_request(frame)
            except ProtocolError:
                meter = None  # a request the meter cannot parse gets no answer
            if meter is None or frame.address == dlt645.BROADCAST_ADDRESS:
                await bus.transact(writer, raw, None, _silent)
                continue
            await bus.transact(writer, raw, meter, partial(answer, meter, request))


def _silent() -> None:
    return None


def _addressed(bus: SimBus, address: str) -> SimMeter | None:
    if address == dlt645.WILDCARD_ADDRESS:
        return next(iter(bus.meters.values())) if len(bus.meters) == 1 else None
    return bus.meters.get(address)
