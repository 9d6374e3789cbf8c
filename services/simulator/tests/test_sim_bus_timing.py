"""Bus physics for every protocol: N transactions from two masters on one bus take at least the line
time (characters × 11 bits / baud + reply delay, + Modbus silent intervals), because the line carries
exactly one transaction at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from shuidian_protocols import cjt188, dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.adapters.modbus_device import rtu_frame, silent_interval
from shuidian_simulator.estate import Estate

MODBUS_READ = bytes([3, 0, 0, 0, 17])


def _dlt645_reply(parser: dlt645.StreamParser) -> Callable[[bytes], bool]:
    return lambda chunk: bool(parser.feed(chunk))


def _cjt188_reply(parser: cjt188.StreamParser) -> Callable[[bytes], bool]:
    return lambda chunk: bool(parser.feed(chunk))


def _sized_reply(size: int) -> Callable[[bytes], bool]:
    seen = bytearray()

    def complete(chunk: bytes) -> bool:
        seen.extend(chunk)
        if len(seen) >= size:
            del seen[:size]
            return True
        return False

    return complete


# protocol → address, request, (request bytes, reply bytes) on the line, is Modbus
CASES = {
    "dlt645": ("000000000001", dlt645.read_request("000000000001", 0x00010000), (20, 24), False),
    "dlt645-1997": ("000000000001", dlt645.read_request_1997("000000000001", 0x9010), (18, 22), False),
    "cjt188": ("00000000000001", cjt188.read_request("00000000000001"), (18, 37), False),
    "modbus-rtu": ("1", rtu_frame(1, MODBUS_READ), (8, 39), True),
    "modbus-tcp": ("1", b"\0\1\0\0\0\6" + rtu_frame(1, MODBUS_READ)[:-2], (8, 39), True),
}


def detector(protocol: str) -> Callable[[bytes], bool]:
    if protocol.startswith("dlt645"):
        return _dlt645_reply(dlt645.StreamParser())
    if protocol == "cjt188":
        return _cjt188_reply(cjt188.StreamParser())
    return _sized_reply(39 if protocol == "modbus-rtu" else 43)


@pytest.mark.parametrize("protocol", list(CASES))
async def test_two_masters_share_one_line_at_the_physical_rate(protocol: str) -> None:
    address, request, (request_size, reply_size), modbus = CASES[protocol]
    baud, delay_ms, per_master = 2400, 30, 3
    meter = {"id": "M", "address": address, "utility": "water" if protocol == "cjt188" else "electricity"}
    if modbus:
        meter["model"] = "acrel-ddsy1352"
    bus = {"id": "bus", "protocol": protocol, "baud": baud, "reply_delay_ms": delay_ms, "meters": [meter]}
    estate = Estate.model_validate({"acceleration": 60, "gateways": [{"id": "gw", "buses": [bus]}]})
    async with Simulator(estate) as sim:

        async def master() -> None:
            reader, writer = await asyncio.open_connection(*sim.bus_endpoint("bus"))
            complete = detector(protocol)
            for _ in range(per_master):
                writer.write(request)
                await writer.drain()
                async with asyncio.timeout(5):
                    while not complete(await reader.read(4096)):
                        pass
            writer.close()

        started = time.perf_counter()
        await asyncio.gather(master(), master())
        elapsed = time.perf_counter() - started
        assert sim.buses["bus"].stats.answered == 2 * per_master
    gaps = 2 * silent_interval(baud) if modbus else 0.0
    line = (request_size + reply_size) * 11 / baud + gaps + delay_ms / 1000
    assert elapsed >= 2 * per_master * line * 0.97
