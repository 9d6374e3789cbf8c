"""CJ/T 188 behaviour of a simulated water meter: 901F current data, read address, valve control (A017)
with a motor that takes seconds; every reply carries the DI in the byte order the request used."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from shuidian_protocols import cjt188
from shuidian_protocols.errors import ProtocolError
from shuidian_simulator.adapters.bus import SimBus
from shuidian_simulator.domain.meter import SimMeter

log = logging.getLogger(__name__)
METER_TYPE = cjt188.MeterType.COLD_WATER
STATUS_REFUSED = 0x0001  # error-reply ST for a command the meter will not carry out


def status_word(meter: SimMeter) -> int:
    """The ST word with the meter model's bit positions: valve code 01 when closed, battery-low flag."""
    bits = meter.spec.status_bits
    return (int(meter.relay_open) << bits.valve_bits[0]) | (int(meter.battery_low) << bits.battery_low_bit)


def answer(meter: SimMeter, request: cjt188.Request) -> bytes:
    address, seq, order = meter.address, request.seq, request.order
    if isinstance(request, cjt188.ReadAddressRequest):
        return cjt188.encode_address_reply(address, METER_TYPE, seq=seq, order=order)
    if isinstance(request, cjt188.ValveRequest):
        if not request.open_valve and meter.keep_power:
            return cjt188.encode_error_reply(
                address, METER_TYPE, cjt188.Function.WRITE, seq=seq, order=order, status=STATUS_REFUSED
            )
        meter.command_relay(not request.open_valve)
        log.info("meter %s: valve %s", meter.spec.id, "open" if request.open_valve else "close")
        return cjt188.encode_valve_ack(address, METER_TYPE, seq=seq, order=order, status_raw=status_word(meter))
    if request.di != cjt188.DataId.CURRENT_DATA:
        return cjt188.encode_error_reply(
            address, METER_TYPE, cjt188.Function.READ, seq=seq, order=order, status=STATUS_REFUSED
        )
    meter.advance()
    return cjt188.encode_current_data_reply(
        address,
        METER_TYPE,
        cumulative=meter.register,
        unit=cjt188.Unit.M3,
        settlement=meter.settlement,
        settlement_unit=cjt188.Unit.M3,
        meter_time=meter.local_clock().replace(microsecond=0),
        status_raw=status_word(meter),
        seq=seq,
        order=order,
    )


def _addressed(bus: SimBus, frame: cjt188.Frame) -> SimMeter | None:
    """The single meter a request reaches; AA wildcards that match several meters collide, nobody wins."""
    exact = bus.meter_at(frame.address.upper())
    if exact is not None:
        return exact if cjt188.addressed_to(frame, exact.address, METER_TYPE) else None
    matches = [m for m in bus.meters.values() if cjt188.addressed_to(frame, m.address, METER_TYPE)]
    return matches[0] if len(matches) == 1 else None


async def serve_connection(bus: SimBus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    parser = cjt188.StreamParser()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return
        for frame in parser.feed(chunk):
            if frame.is_reply:
                continue
            raw = cjt188.encode_frame(frame)
            meter = _addressed(bus, frame)
            reply: Callable[[], bytes | None] | None = None
            if meter is not None:
                try:
                    request = cjt188.decode_request(frame)
                except ProtocolError:
                    meter = None  # a request the meter cannot parse gets no answer
                else:
                    reply = partial(answer, meter, request)
            await bus.transact(writer, raw, meter, reply or _silent)


def _silent() -> None:
    return None
