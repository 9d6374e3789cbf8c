"""HTTP control API of the simulator: inspect buses and meters, inject faults, read ground truth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query

from shuidian_kit.errors import Conflict, NotFound
from shuidian_kit.service import install_error_handlers
from shuidian_simulator.adapters.simulator import Simulator
from shuidian_simulator.domain.meter import SimMeter
from shuidian_simulator.errors import AddressRejected
from shuidian_simulator.estate import Fault, FaultKind


def meter_view(meter: SimMeter) -> dict[str, Any]:
    return {
        "id": meter.spec.id,
        "address": meter.address,
        "utility": meter.spec.utility,
        "model": meter.spec.model,
        "register": str(meter.register),
        "tariff_registers": [str(v) for v in meter.tariff_registers],
        "remaining_money": None if meter.remaining_money is None else str(meter.remaining_money),
        "ct_ratio": str(meter.ct_ratio),
        "relay_open": meter.relay_open,
        "relay_commanded_trip": meter.relay_commanded_trip,
        "keep_power": meter.keep_power,
        "pre_trip_alarm": meter.pre_trip_alarm,
        "battery_low": meter.battery_low,
        "cover_open": meter.cover_open,
        "residual_current_ma": str(meter.residual_current_ma),
        "tamper_count": meter.tamper_count,
        "faults": sorted(meter.faults),
        "active_faults": sorted(kind for kind in meter.faults if meter.fault(kind) is not None),
    }


def create_control_app(sim: Simulator) -> FastAPI:
    app = FastAPI(
        title="Shuidian simulator",
        summary="表计与网关仿真器（仅用于开发和测试）· Meter and gateway simulator (dev/test only)",
        version="0.2.0",
    )
    install_error_handlers(app)

    def get_meter(meter_id: str) -> SimMeter:
        if meter_id not in sim.meters:
            raise NotFound(f"没有表计 {meter_id} · no meter {meter_id}")
        return sim.meter(meter_id)

    def check_gateway(gateway_id: str) -> None:
        if gateway_id not in sim.bus_gateway.values():
            raise NotFound(f"没有网关 {gateway_id} · no gateway {gateway_id}")

    @app.get("/buses", summary="Buses with their TCP endpoints and meters")
    async def buses() -> dict[str, Any]:
        endpoints = sim.endpoints()
        return {
            bus_id: {
                **endpoints.get(bus_id, {}),
                "meters": [m.spec.id for m in bus.meters.values()],
                "transactions": bus.stats.transactions,
                "overlaps": bus.stats.overlaps,  # requests that reached the line while another connection held it
            }
            for bus_id, bus in sim.buses.items()
        }

    @app.get("/meters/{meter_id}", summary="A meter's live registers, relay and faults")
    async def meter(meter_id: str) -> dict[str, Any]:
        return meter_view(get_meter(meter_id))

    @app.put("/meters/{meter_id}/faults/{kind}", summary="Switch a fault on")
    async def set_fault(meter_id: str, kind: FaultKind, fault: Fault | None = None) -> dict[str, Any]:
        get_meter(meter_id)
        if fault is not None and fault.kind is not kind:
            raise Conflict(f"故障类型不一致 · the body's kind {fault.kind} is not {kind}", code="kind_mismatch")
        try:
            sim.set_fault(meter_id, fault or Fault(kind=kind))
        except AddressRejected as err:
            raise Conflict(f"表计地址不可用 · {err}", code="address_rejected") from err
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
        check_gateway(gateway_id)
        sim.set_gateway_online(gateway_id, False)
        return {"gateway": gateway_id, "state": "offline"}

    @app.delete("/gateways/{gateway_id}/offline", summary="Power a gateway on again")
    async def gateway_on(gateway_id: str) -> dict[str, str]:
        check_gateway(gateway_id)
        sim.set_gateway_online(gateway_id, True)
        return {"gateway": gateway_id, "state": "online"}

    @app.get("/truth/meters/{meter_id}", summary="Ground truth: consumption by real-time interval, relay, events")
    async def truth(
        meter_id: str,
        since: Annotated[float | None, Query(description="real epoch seconds")] = None,
        until: Annotated[float | None, Query(description="real epoch seconds")] = None,
    ) -> dict[str, Any]:
        get_meter(meter_id)
        return sim.truth(meter_id, since, until)

    @app.get("/truth", summary="Ground truth: true consumption of every meter since the start")
    async def truth_all() -> dict[str, str]:
        return {meter_id: str(quantity) for meter_id, quantity in sim.consumed().items()}

    return app
