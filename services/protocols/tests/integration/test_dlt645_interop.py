"""Our DL/T 645 codec against the PyPI `dlt645` meter simulator over a real loopback TCP socket.

The package (3.2.0) serves DL/T 645-2007 over TCP (`MeterServerService.new_tcp_server`, one thread per
connection) or a serial port; TCP is what a transparent RS-485 gateway gives us, so that is what we use.

Where the package departs from the standard (found reading its source; none of it is copied here):
- Baud-rate feature word (function 17): it maps 4800/9600/19200 to 16H/32H/64H (baud / 300 in BCD); the
  standard's word is one bit per rate (1200 = 04H, 2400 = 08H, 4800 = 10H, 9600 = 20H, 19200 = 40H).
  Only 1200 and 2400 agree.
- Broadcast time (function 08): it reads the six bytes as YY MM DD hh mm ss, but they travel least
  significant first (ss mm hh DD MM YY), so a standard frame sets a wrong or invalid clock on it.
- A request for another address gets an error reply (OTHER) instead of silence, which on a shared bus
  would collide with the addressed meter's answer. Only a whole AA×6 address counts as a wildcard.
- Password check compares all four bytes, level byte included, against an all-zero default: until
  `set_password` is called only level 00 / password 000000 is accepted.
- `set_address("…")` and `set_password("…")` take hex digits in wire order (least significant byte first):
  password 123456 at level 02 is `set_password("02563412")`; we pass the address as bytes.
- No 1C relay control (it answers DC / OTHER), no prepaid DIs (0090xxxx), no block DIs (xxxxFF00).
- Values are floats internally; exact for the small values set here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from dlt645 import MeterServerService

from shuidian_protocols.dlt645 import (
    ErrorBits,
    Frame,
    Function,
    MeterErrorReply,
    RelayCommand,
    StreamParser,
    decode_value,
    encode_value,
    parse_ack,
    parse_address_reply,
    parse_read_reply,
    read_address_request,
    read_request,
    relay_control_request,
    write_request,
)

pytestmark = pytest.mark.integration

ADDRESS = "123456789012"


@pytest.fixture
def meter() -> Iterator[Any]:
    service = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=1.0)  # port 0: a free port per test
    service.set_address(bytes.fromhex(ADDRESS)[::-1])
    assert service.start()
    try:
        yield service
    finally:
        service.stop()


async def exchange(meter: Any, request: bytes) -> Frame:
    """Send one request over a fresh connection and return the first frame that comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", meter.server.port)
    try:
        writer.write(request)
        await writer.drain()
        parser = StreamParser()
        async with asyncio.timeout(3):
            while True:
                chunk = await reader.read(256)
                if not chunk:
                    raise ConnectionError("meter closed the connection")
                frames = parser.feed(chunk)
                if frames:
                    assert parser.rejected == 0
                    return frames[0]
    finally:
        writer.close()
        await writer.wait_closed()


async def read(meter: Any, di: int) -> bytes:
    frame = await exchange(meter, read_request(ADDRESS, di))
    assert frame.address == ADDRESS
    return parse_read_reply(frame, di)


async def test_energy_and_voltage(meter: Any) -> None:
    assert meter.set_00(0x00010000, 1234.56)
    assert meter.set_02(0x02010100, 220.1)
    assert meter.set_02(0x02020100, -1.234)
    assert decode_value(0x00010000, await read(meter, 0x00010000)) == Decimal("1234.56")
    assert decode_value(0x02010100, await read(meter, 0x02010100)) == Decimal("220.1")
    # Its sign convention for signed fields agrees with ours: bit 7 of the top byte.
    assert decode_value(0x02020100, await read(meter, 0x02020100)) == Decimal("-1.234")


async def test_date_parameter(meter: Any) -> None:
    assert meter.set_04(0x04000101, "26112503")  # YYMMDDWW: Wednesday 2026-11-25
    assert decode_value(0x04000101, await read(meter, 0x04000101)) == date(2026, 11, 25)


async def test_write_then_read_back(meter: Any) -> None:
    assert meter.set_password("02563412")  # level 02, password 123456 (wire order, see above)
    payload = encode_value(0x04000102, time(12, 30, 0))
    ack = await exchange(meter, write_request(ADDRESS, 0x04000102, payload, password=123456, operator=1))
    parse_ack(ack, Function.WRITE)
    assert decode_value(0x04000102, await read(meter, 0x04000102)) == time(12, 30, 0)


async def test_wrong_password_is_unauthorised(meter: Any) -> None:
    payload = encode_value(0x04000102, time(8, 0, 0))
    refused = await exchange(meter, write_request(ADDRESS, 0x04000102, payload, password=999999))
    with pytest.raises(MeterErrorReply) as caught:
        parse_ack(refused, Function.WRITE)
    assert caught.value.error == ErrorBits.UNAUTHORISED


async def test_unknown_di_is_no_data(meter: Any) -> None:
    with pytest.raises(MeterErrorReply) as caught:
        await read(meter, 0x00900200)
    assert caught.value.error == ErrorBits.NO_DATA


async def test_relay_control_is_refused(meter: Any) -> None:
    expires_at = datetime(2099, 12, 31, 23, 59, 59)  # noqa: DTZ001 - meter-local wall clock
    reply = await exchange(meter, relay_control_request(ADDRESS, RelayCommand.TRIP, expires_at))
    assert reply.control == 0xDC
    with pytest.raises(MeterErrorReply) as caught:
        parse_ack(reply, Function.RELAY_CONTROL)
    assert caught.value.error == ErrorBits.OTHER


async def test_read_address(meter: Any) -> None:
    assert parse_address_reply(await exchange(meter, read_address_request())) == ADDRESS
