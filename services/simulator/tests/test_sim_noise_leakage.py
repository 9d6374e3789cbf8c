"""The noise fault (replies replaced by line noise that never forms a frame) on the DL/T 645 wire, and the
earth-leakage fault behind a Modbus meter's residual-current registers."""

from __future__ import annotations

import asyncio
import struct
from decimal import Decimal
from typing import Any

import httpx

from shuidian_protocols import dlt645
from shuidian_protocols.errors import ChecksumError, FrameError
from shuidian_protocols.modbus_profiles import load_profile
from shuidian_simulator import Simulator
from shuidian_simulator.adapters.bus import NOISE_REPLY
from shuidian_simulator.adapters.modbus_device import read_registers
from shuidian_simulator.api.control import create_control_app
from shuidian_simulator.estate import Estate, Fault, FaultKind

A1 = "000000000001"


def estate(protocol: str, meters: list[dict[str, Any]]) -> Estate:
    return Estate.model_validate(
        {"seed": 4, "gateways": [{"id": "gw", "buses": [{"id": "bus", "protocol": protocol, "meters": meters}]}]}
    )


async def raw_reply(sim: Simulator, request: bytes, timeout: float = 0.5) -> bytes:
    reader, writer = await asyncio.open_connection(*sim.bus_endpoint("bus"))
    try:
        writer.write(request)
        await writer.drain()
        received = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    received += chunk
        except TimeoutError:
            pass
        return received
    finally:
        writer.close()


async def test_noise_replaces_replies_with_bytes_that_never_form_a_frame() -> None:
    meters = [{"id": "E-1", "address": A1, "faults": [{"kind": "noise", "probability": "1"}]}]
    async with Simulator(estate("dlt645", meters)) as sim:
        received = await raw_reply(sim, dlt645.read_request(A1, 0x00010000))
        assert received == NOISE_REPLY
        parser = dlt645.StreamParser()
        assert parser.feed(received) == []
        assert parser.rejected >= 1
        assert isinstance(parser.last_error, FrameError)
        assert not isinstance(parser.last_error, ChecksumError)  # a master calls it malformed, not a bad checksum
        sim.clear_fault("E-1", FaultKind.NOISE)
        frames = dlt645.StreamParser().feed(await raw_reply(sim, dlt645.read_request(A1, 0x00010000)))
        assert len(frames) == 1


async def test_noise_hits_a_deterministic_share_of_replies() -> None:
    meters = [{"id": "E-1", "address": A1, "faults": [{"kind": "noise", "probability": "0.5"}]}]
    async with Simulator(estate("dlt645", meters)) as sim:
        replies = [await raw_reply(sim, dlt645.read_request(A1, 0x00010000)) for _ in range(12)]
    noisy = sum(1 for r in replies if r == NOISE_REPLY)
    assert 0 < noisy < 12
    assert all(r == NOISE_REPLY or dlt645.StreamParser().feed(r) for r in replies)


async def test_earth_leakage_shows_in_the_residual_current_registers_while_supply_is_on() -> None:
    meters = [{"id": "E-1", "address": "1", "model": "generic-rcd-meter"}]
    profile = load_profile("generic-rcd-meter")
    start = profile.register("residual_current").address

    def registers(sim: Simulator) -> tuple[int, int]:
        pdu = read_registers(sim.meter("E-1"), profile, 3, start, 2)
        assert pdu[:2] == bytes([3, 4])
        residual, alarm = struct.unpack(">HH", pdu[2:])
        return residual, alarm

    async with Simulator(estate("modbus-rtu", meters)) as sim:
        assert registers(sim) == (0, 0)
        sim.set_fault("E-1", Fault(kind=FaultKind.EARTH_LEAKAGE, milliamps=Decimal(20)))
        assert registers(sim) == (20, 0)  # below the meter's own 30 mA alarm
        sim.set_fault("E-1", Fault(kind=FaultKind.EARTH_LEAKAGE))
        assert registers(sim) == (50, 1)
        transport = httpx.ASGITransport(app=create_control_app(sim))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            assert (await client.get("/meters/E-1")).json()["residual_current_ma"] == "50"
        sim.meter("E-1").set_relay(True)  # supply cut: nothing flows, nothing leaks
        assert registers(sim) == (0, 0)
