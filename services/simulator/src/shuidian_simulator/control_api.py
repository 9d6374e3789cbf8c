"""HTTP control API of the simulator: inspect buses and meters, inject faults, read ground truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException

from shuidian_simulator.estate import Fault, FaultKind
from shuidian_simulator.meter import SimMeter
from shuidian_simulator.simulator import Simulator


def meter_view(meter: SimMeter) -> dict[str, Any]:
    return {
        "id": meter.spec.id,
        "address": meter.spec.address,
        "utility": meter.spec.utility,
        "register": str(meter.register),
        "tariff_registers": [str(v) for v in meter.tariff_registers],
        "remaining_money": None if meter.remaining_money is None else str(meter.remaining_money),
        "relay_open": meter.relay_open,
        "keep_power": meter.keep_power,
        "faults": sorted(meter.faults),
    }


def create_control_app(sim: Simulator) -> FastAPI:
    app = FastAPI(
        title="Shuidian simulator",
        summary="表计与网关仿真器（仅用于开发和测试）· Meter and gateway simulator (dev/test only)",
        version="0.1.0",
    )

    def get_meter(meter_id: str) -> SimMeter:
        if meter_id not in sim.meters:
            raise HTTPException(404, f"no meter {meter_id}")
        return sim.meter(meter_id)

    @app.get("/buses", summary="Buses with their TCP endpoints and meters")
    async def buses() -> dict[str, Any]:
        endpoints = sim.endpoints()
        return {
            bus_id: {**endpoints.get(bus_id, {}), "meters": [m.spec.id for m in bus.meters.values()]}
            for bus_id, bus in sim.buses.items()
        }

    @app.get("/meters/{meter_id}", summary="A meter's live registers, relay and faults")
    async def meter(meter_id: str) -> dict[str, Any]:
        return meter_view(get_meter(meter_id))

    @app.put("/meters/{meter_id}/faults/{kind}", summary="Switch a fault on")
    async def set_fault(meter_id: str, kind: FaultKind, fault: Fault | None = None) -> dict[str, Any]:
        get_meter(meter_id)
        sim.set_fault(meter_id, fault or Fault(kind=kind))
        return meter_view(get_meter(meter_id))

    @app.delete("/meters/{meter_id}/faults/{kind}", summary="Switch a fault off")
    async def clear_fault(meter_id: str, kind: FaultKind) -> dict[str, Any]:
        get_meter(meter_id)
        sim.clear_fault(meter_id, kind)
        return meter_view(get_meter(meter_id))

    @app.post(
        "/meters/{meter_id}/press-button", summary="The tenant presses the meter's button (close after close-allowed)"
    )
    async def press(meter_id: str) -> dict[str, Any]:
        meter = get_meter(meter_id)
        if not meter.relay_commanded_trip:
            meter.set_relay(False)
        return meter_view(meter)

    @app.put("/gateways/{gateway_id}/offline", summary="Power a gateway off (its buses drop and refuse connections)")
    async def gateway_off(gateway_id: str) -> dict[str, str]:
        sim.set_gateway_online(gateway_id, False)
        return {"gateway": gateway_id, "state": "offline"}

    @app.delete("/gateways/{gateway_id}/offline", summary="Power a gateway on again")
    async def gateway_on(gateway_id: str) -> dict[str, str]:
        sim.set_gateway_online(gateway_id, True)
        return {"gateway": gateway_id, "state": "online"}

    @app.get("/truth/meters/{meter_id}", summary="Ground truth: consumption added, by real-time interval")
    async def truth(meter_id: str) -> dict[str, Any]:
        meter = get_meter(meter_id)
        total = sum((t.quantity for t in meter.truth), Decimal(0))
        return {
            "meter_id": meter_id,
            "consumed": str(total),
            "intervals": [
                {"from": t.real_from, "to": t.real_to, "quantity": str(t.quantity)} for t in meter.truth[-500:]
            ],
            "relay_history": [{"at": at, "open": is_open} for at, is_open in meter.relay_history],
        }

    return app
