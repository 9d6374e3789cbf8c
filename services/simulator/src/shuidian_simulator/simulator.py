"""The simulator: every bus of an estate listening on loopback, meters, faults and ground truth."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from shuidian_simulator import dlt645_meter
from shuidian_simulator.bus import SimBus
from shuidian_simulator.consumption import ConsumptionModel
from shuidian_simulator.estate import Estate, Fault, FaultKind, Protocol
from shuidian_simulator.meter import SimClock, SimMeter

log = logging.getLogger(__name__)

SERVERS = {Protocol.DLT645: dlt645_meter.serve_connection}


class Simulator:
    """`async with Simulator(estate) as sim:` — all buses listen until the block ends."""

    def __init__(self, estate: Estate) -> None:
        self.estate = estate
        self.clock = SimClock(estate.acceleration)
        self.meters: dict[str, SimMeter] = {}
        self.buses: dict[str, SimBus] = {}
        self.bus_gateway: dict[str, str] = {}
        for gateway in estate.gateways:
            for bus_spec in gateway.buses:
                by_address: dict[str, SimMeter] = {}
                for spec in bus_spec.meters:
                    model = ConsumptionModel(estate.seed, spec.id, spec.utility, spec.profile)
                    meter = SimMeter.create(spec, model, self.clock)
                    self.meters[spec.id] = meter
                    by_address[spec.address.upper()] = meter
                self.buses[bus_spec.id] = SimBus(bus_spec, by_address, gateway.host)
                self.bus_gateway[bus_spec.id] = gateway.id

    async def __aenter__(self) -> Self:
        for bus_id, bus in self.buses.items():
            server = SERVERS.get(bus.spec.protocol)
            if server is None:
                log.warning("bus %s: protocol %s is not simulated yet; not listening", bus_id, bus.spec.protocol)
                continue
            await bus.start(server)
            log.info(
                "bus %s (%s, %d baud) listening on %s:%d", bus_id, bus.spec.protocol, bus.spec.baud, bus.host, bus.port
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for bus in self.buses.values():
            await bus.stop()

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
        self.meter(meter_id).faults[fault.kind] = fault

    def clear_fault(self, meter_id: str, kind: FaultKind) -> None:
        self.meter(meter_id).faults.pop(kind, None)

    def set_gateway_online(self, gateway_id: str, online: bool) -> None:
        for bus_id, bus in self.buses.items():
            if self.bus_gateway[bus_id] == gateway_id:
                bus.set_online(online)
