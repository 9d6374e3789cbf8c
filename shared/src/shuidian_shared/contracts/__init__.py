"""The HTTP contracts between the api-gateway and the backends: for each route the gateway calls, its
method, path and typed response, in one place. The backend serves these models (`response_model=`), the
gateway's test doubles answer with them, and a test checks every route listed here against the real
services' OpenAPI — a route that exists only in a fake is a bug."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shuidian_shared.contracts import billing, collector, control


@dataclass(frozen=True)
class Call:
    """A backend route the gateway calls."""

    service: str
    method: str
    path: str  # under the service's root, e.g. /v1/meters/{meter_id}/binding
    response: type[BaseModel] | None = None


CALLS: tuple[Call, ...] = (
    Call("billing", "GET", "/v1/rooms/{room_id}", billing.RoomDetailOut),
    Call("billing", "GET", "/v1/meters/{meter_id}/binding", billing.MeterBindingOut),
    Call("billing", "GET", "/v1/meters/{meter_id}/reading", billing.LatestReadingOut),
    Call("billing", "GET", "/v1/estates/{estate_id}/meters", billing.EstateMetersOut),
    Call("billing", "GET", "/v1/tenants/{tenant_id}", billing.TenantRecordOut),
    Call("billing", "GET", "/v1/tenants/{tenant_id}/leases", billing.TenantLeasesOut),
    Call("billing", "GET", "/v1/buildings/{building_id}", billing.BuildingRecordOut),
    Call("billing", "GET", "/v1/floors/{floor_id}", billing.FloorRecordOut),
    Call("billing", "GET", "/v1/rooms/{room_id}/meters/{meter_id}", billing.RoomMeterOut),
    Call("billing", "GET", "/v1/tariffs/{utility}", billing.TariffOut),
    Call("billing", "POST", "/v1/payments/sandbox/orders/{order_id}/pay", billing.NotifyOut),
    Call("collector", "GET", "/v1/gateways/{gateway_id}", collector.GatewayRecordOut),
    Call("collector", "GET", "/v1/buses/{bus_id}", collector.BusRecordOut),
    Call("collector", "GET", "/v1/meters/{meter_id}", collector.MeterRecordOut),
    Call("control", "GET", "/v1/keep-power/households/{account_id}", control.KeepPowerOut),
)
