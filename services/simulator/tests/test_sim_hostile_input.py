"""Hostile bytes on every protocol's port: the bus keeps serving, and a valid request after the noise
is still answered; the Modbus RTU request framer never raises and never loses a whole frame."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_protocols import cjt188, dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.adapters.modbus_device import cut_rtu_requests, rtu_frame
from shuidian_simulator.estate import Estate

READ = rtu_frame(7, bytes([3, 0, 0, 0, 17]))


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(max_size=300), split=st.integers(min_value=0, max_value=400))
def test_rtu_framer_finds_a_request_behind_any_noise(noise: bytes, split: int) -> None:
    stream = noise + READ
    buf = bytearray(stream[:split])
    frames = cut_rtu_requests(buf)
    buf += stream[split:]
    frames += cut_rtu_requests(buf)
    # Noise may hold CRC-valid frames of its own; the request is lost only when a frame the framer
    # accepted out of the noise runs into it.
    assert all(len(f) >= 4 for f in frames)
    if READ not in frames:
        ends = [stream.find(f) + len(f) for f in frames if stream.find(f) >= 0]
        assert any(end > len(noise) for end in ends), (noise.hex(), [f.hex() for f in frames])


def estate() -> Estate:
    buses = [
        {"id": "dlt645", "protocol": "dlt645", "meters": [{"id": "E", "address": "000000000001"}]},
        {"id": "cjt188", "protocol": "cjt188", "meters": [{"id": "W", "address": "00000000000001"}]},
        {"id": "tcp", "protocol": "modbus-tcp", "meters": [{"id": "M", "address": "7", "model": "acrel-ddsy1352"}]},
    ]
    return Estate.model_validate({"gateways": [{"id": "gw", "buses": [{**b, "baud": 9600} for b in buses]}]})


async def _answered(sim: Simulator, bus: str, noise: bytes, request: bytes, size: int | None) -> bool:
    """Send noise then a request on a fresh connection; whether a reply frame comes back."""
    reader, writer = await asyncio.open_connection(*sim.bus_endpoint(bus))
    try:
        writer.write(noise + request)
        await writer.drain()
        parser = dlt645.StreamParser() if bus == "dlt645" else cjt188.StreamParser()
        async with asyncio.timeout(2):
            if size is not None:
                return len(await reader.readexactly(size)) == size
            while not parser.feed(await reader.read(4096)):
                pass
            return True
    finally:
        writer.close()


async def test_every_port_survives_noise_and_answers_the_next_request() -> None:
    noise = bytes(range(256)) + b"\x68" * 20 + b"\xfe" * 10 + b"\x16\x68\x10"
    async with Simulator(estate()) as sim:
        assert await _answered(sim, "dlt645", noise, dlt645.read_request("000000000001", 0x00010000), None)
        assert await _answered(sim, "cjt188", noise, cjt188.read_request("00000000000001"), None)
        # Modbus TCP cannot resynchronise inside a stream: a gateway drops a connection it cannot frame,
        # and the next connection is served.
        reader, writer = await asyncio.open_connection(*sim.bus_endpoint("tcp"))
        writer.write(b"\x00\x01\x99\x99\x00\x06" + b"\x07" * 6)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 2) == b""
        writer.close()
        tcp_read = b"\0\1\0\0\0\6" + READ[:-2]
        assert await _answered(sim, "tcp", b"", tcp_read, 9 + 34)
