"""The simulator: every bus of an estate listening on loopback, meters, faults and ground truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from shuidian_protocols.modbus_profiles import load_profile
from shuidian_simulator.adapters import cjt188_meter, dlt645_meter, modbus_device, state
from shuidian_simulator.adapters.bus import Handler, LineDiscipline, SimBus
from shuidian_simulator.domain.consumption import ConsumptionModel
from shuidian_simulator.domain.meter import Later, RealClock, SimClock, SimMeter
from shuidian_simulator.errors import AddressRejected
from shuidian_simulator.estate import Estate, Fault, FaultKind, Protocol

log = logging.getLogger(__name__)

SERVERS: dict[Protocol, tuple[Handler, LineDiscipline]] = {
    Protocol.DLT645: (dlt645_meter.serve_connection, LineDiscipline()),
    Protocol.DLT645_1997: (dlt645_meter.serve_connection_1997, LineDiscipline()),
    Protocol.CJT188: (cjt188_meter.serve_connection, LineDiscipline()),
    Protocol.MODBUS_RTU: (modbus_device.serve_rtu, modbus_device.RTU_LINE),
    Protocol.MODBUS_TCP: (modbus_device.serve_tcp, modbus_device.TCP_LINE),
}
MODBUS = (Protocol.MODBUS_RTU, Protocol.MODBUS_TCP)


class Simulator:
    """`async with Simulator(estate) as sim:` — all buses listen until the block ends. With a `state_file`, the meters
    start from the state saved there (registers, money, relay …) and it is saved every `save_interval` seconds
    and when the block ends, so a restart does not turn the registers back to the estate's seed values."""

    def __init__(
        self,
        estate: Estate,
        *,
        state_file: Path | None = None,
        save_interval: float = state.SAVE_INTERVAL_S,
        real: RealClock = time.time,
        later: Later | None = None,
    ) -> None:
        self.estate = estate
        self.state_file = state_file
        self._save_interval = save_interval
        self._kept = contextlib.AsyncExitStack()
        # The meters' clock: the wall clock and the event loop's timer unless the caller passes its own.
        self.clock = SimClock(estate.acceleration, estate.sim_start, real=real, later=later or event_loop_later)
        self.meters: dict[str, SimMeter] = {}
        self.buses: dict[str, SimBus] = {}
        self.bus_gateway: dict[str, str] = {}
        self.meter_bus: dict[str, str] = {}
        for gateway in estate.gateways:
            for bus_spec in gateway.buses:
                by_address: dict[str, SimMeter] = {}
                for spec in bus_spec.meters:
                    if bus_spec.protocol in MODBUS:
                        load_profile(spec.model)  # an unknown model fails here, not at the first poll
                    model = ConsumptionModel(estate.seed, spec.id, spec.utility, spec.profile)
                    meter = SimMeter.create(spec, model, self.clock, seed=estate.seed, history_limit=estate.truth_limit)
                    self.meters[spec.id] = meter
                    self.meter_bus[spec.id] = bus_spec.id
                    by_address[spec.address.upper()] = meter
                self.buses[bus_spec.id] = SimBus(
                    bus_spec,
                    by_address,
                    gateway.host,
                    clock=self.clock,
                    gateway_faults=gateway.faults,
                    wire_log_limit=estate.wire_log_limit,
                )
                self.bus_gateway[bus_spec.id] = gateway.id

    async def __aenter__(self) -> Self:
        if self.state_file is not None:
            await self._kept.enter_async_context(state.kept(self.state_file, self.meters, self._save_interval))
        for bus_id, bus in self.buses.items():
            handler, discipline = SERVERS[bus.spec.protocol]
            await bus.start(handler, discipline)
            log.debug(
                "bus %s (%s, %d baud) listening on %s:%d", bus_id, bus.spec.protocol, bus.spec.baud, bus.host, bus.port
            )
        log.info("simulator: %d buses, %d meters listening", len(self.buses), len(self.meters))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for bus in self.buses.values():
                await bus.stop()
        finally:
            await self._kept.aclose()  # the last save, after the buses stopped

    def bus_endpoint(self, bus_id: str) -> tuple[str, int]:
        bus = self.buses[bus_id]
        return bus.host, bus.port

    def endpoints(self) -> dict[str, dict[str, object]]:
        return {
            bus_id: {
                "host": bus.host,
                "port": bus.port,
                "protocol": bus.spec.protocol.value,
                "gateway": self.bus_gateway[bus_id],
            }
            for bus_id, bus in self.buses.items()
            if bus.port
        }

    def meter(self, meter_id: str) -> SimMeter:
        meter = self.meters[meter_id]
        meter.advance()
        return meter

    def wire_log(self, bus_id: str) -> list[tuple[float, str, bytes]]:
        return list(self.buses[bus_id].wire)

    def set_fault(self, meter_id: str, fault: Fault) -> None:
        """Switch a fault on (one-shot faults are carried out as soon as their start is reached)."""
        if fault.kind is FaultKind.REPLACEMENT and fault.address is not None:
            self._check_address(meter_id, fault.address.upper())
        self.meters[meter_id].set_fault(fault)

    def clear_fault(self, meter_id: str, kind: FaultKind) -> None:
        self.meters[meter_id].clear_fault(kind)

    def _check_address(self, meter_id: str, address: str) -> None:
        """A replacement meter's address must suit the bus protocol and be free on the bus."""
        bus = self.buses[self.meter_bus[meter_id]]
        if bus.spec.protocol in MODBUS:
            valid = address.isdigit() and 1 <= int(address) <= 247
        else:
            valid = address.isdigit() and len(address) == (14 if bus.spec.protocol is Protocol.CJT188 else 12)
        if not valid:
            raise AddressRejected(f"address {address} is not valid on a {bus.spec.protocol} bus")
        if any(m.address == address and m.spec.id != meter_id for m in bus.meters.values()):
            raise AddressRejected(f"address {address} is taken on bus {bus.spec.id}")

    def truth(self, meter_id: str, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Ground truth of a meter: true consumption by interval (real epoch seconds), relay history, events."""
        return self.meters[meter_id].truth_view(since, until)

    def consumed(self) -> dict[str, Decimal]:
        """True consumption of every meter since the start (kWh or m³, primary side)."""
        for meter in self.meters.values():
            meter.advance()
        return {meter_id: meter.exact for meter_id, meter in self.meters.items()}

    def set_gateway_online(self, gateway_id: str, online: bool) -> None:
        for bus_id, bus in self.buses.items():
            if self.bus_gateway[bus_id] == gateway_id:
                bus.set_online(online)


def event_loop_later(delay: float, action: Callable[[], None]) -> object:
    """The running event loop's timer: an actuator finishes moving `delay` seconds from now."""
    return asyncio.get_running_loop().call_later(delay, action)
