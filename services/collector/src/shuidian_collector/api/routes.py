"""Collector's HTTP API: the device registry, device state and the online-rate report. Each route parses, calls
one adapter or domain function of the container `app.py` built, and answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from shuidian_collector.adapters import reports
from shuidian_collector.adapters.container import Container
from shuidian_collector.adapters.fleet import Fleet
from shuidian_collector.adapters.registry import Registry
from shuidian_collector.api.schemas import (
    BusIn,
    DeviceOnlineRateOut,
    DeviceStateOut,
    GatewayIn,
    MeterIn,
)
from shuidian_collector.domain import availability, estate_csv
from shuidian_collector.domain.devices import BusConfig, MeterConfig
from shuidian_collector.errors import InvalidWindow, NotFound
from shuidian_kit.service import problem
from shuidian_shared.contracts import collector as contracts
from shuidian_shared.messages import Identifier

router = APIRouter(prefix="/v1", tags=["registry"])


def _container(request: Request) -> Container:
    container: Container = request.app.state.collector
    return container


def _registry(request: Request) -> Registry:
    return _container(request).registry


def _fleet(request: Request) -> Fleet:
    return _container(request).fleet


Parts = Annotated[Container, Depends(_container)]
Reg = Annotated[Registry, Depends(_registry)]
Pollers = Annotated[Fleet, Depends(_fleet)]


@router.put("/gateways/{gateway_id}", status_code=204, summary="Create or update a gateway")
async def put_gateway(gateway_id: Identifier, body: GatewayIn, registry: Reg, fleet: Pollers) -> None:
    await registry.put_gateway(gateway_id, body.name, body.shard)
    fleet.refresh()


@router.put("/buses/{bus_id}", status_code=204, summary="Create or update an RS-485 bus behind a gateway")
async def put_bus(bus_id: Identifier, body: BusIn, registry: Reg, fleet: Pollers) -> None:
    await registry.put_bus(
        BusConfig(
            bus_id, body.gateway_id, body.host, body.port, body.protocol, body.baud, body.timeout_ms, body.retries, ()
        )
    )
    fleet.refresh()


@router.put("/meters/{meter_id}", status_code=204, summary="Create or update a meter on a bus")
async def put_meter(meter_id: Identifier, body: MeterIn, registry: Reg, fleet: Pollers) -> None:
    await registry.put_meter(
        body.bus_id, MeterConfig(meter_id, body.address, body.model, body.utility, body.poll_interval_s)
    )
    fleet.refresh()


@router.get("/gateways/{gateway_id}", response_model=contracts.GatewayRecordOut, summary="A registered gateway")
async def get_gateway(gateway_id: str, registry: Reg) -> Any:
    return await registry.record("gateway", gateway_id)


@router.get("/buses/{bus_id}", response_model=contracts.BusRecordOut, summary="A registered RS-485 bus")
async def get_bus(bus_id: str, registry: Reg) -> Any:
    return await registry.record("bus", bus_id)


@router.get("/meters/{meter_id}", response_model=contracts.MeterRecordOut, summary="A registered meter")
async def get_meter(meter_id: str, registry: Reg) -> Any:
    return await registry.record("meter", meter_id)


@router.get(
    "/meters/{meter_id}/state", response_model=DeviceStateOut, tags=["devices"], summary="Last known device state"
)
async def state(meter_id: str, registry: Reg) -> Any:
    return await registry.state(meter_id)


@router.get("/meters", response_model=list[DeviceStateOut], tags=["devices"], summary="Device state of every meter")
async def states(registry: Reg, gateway_id: str | None = None, online: bool | None = None) -> Any:
    return await registry.states(gateway_id, online)


@router.get("/gateways/{gateway_id}/status", tags=["devices"], summary="Whether anything behind a gateway answers")
async def gateway_status(gateway_id: str, fleet: Pollers) -> dict[str, Any]:
    poller = fleet.pollers.get(gateway_id)
    if poller is None:
        raise NotFound(f"gateway {gateway_id} is not polled by this collector instance")
    return {
        "gateway_id": gateway_id,
        "online": poller.health.online,
        "meters": sum(len(b.meters) for b in poller.gateway.buses),
        "buses": sorted(poller.buses),
    }


def _rates(meters: int, online: int, up: float, seen: float) -> dict[str, Any]:
    return {
        "meters": meters,
        "online": online,
        "online_rate": availability.rate(online, meters),
        "availability": availability.rate(up, seen),
        "observed_seconds": round(seen, 3),
        "online_seconds": round(up, 3),
    }


@router.get(
    "/reports/device-online-rate",
    response_model=DeviceOnlineRateOut,
    tags=["reports"],
    summary="设备在线率 · Meters online now and availability over a window, overall and per gateway",
)
async def device_online_rate(
    parts: Parts,
    gateway_id: Identifier | None = None,
    meter_id: Annotated[
        list[Identifier] | None, Query(max_length=1000, description="only these meters (repeat the parameter)")
    ] = None,
    start: Annotated[AwareDatetime | None, Query(description="window start (default: end − 24 h)")] = None,
    end: Annotated[AwareDatetime | None, Query(description="window end (default: now)")] = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    end = end or now
    start = start or end - availability.DEFAULT_WINDOW
    if end <= start:
        raise InvalidWindow("时间窗口无效 · end must be after start")
    if end - start > availability.MAX_WINDOW:
        raise InvalidWindow("时间窗口过长 · the window is at most 366 days")
    availability.refuse_before_retention(start, now, parts.settings.online_edges_retention_days)
    report = await reports.device_online_report(parts.runtime.engine, start, min(end, now), gateway_id, meter_id)
    gateways = sorted(report.gateways.values(), key=lambda g: g.gateway_id)
    return {
        "at": now,
        "start": start,
        "end": end,
        "total": _rates(
            sum(g.meters for g in gateways),
            sum(g.online for g in gateways),
            sum(g.online_seconds for g in gateways),
            sum(g.observed_seconds for g in gateways),
        ),
        "gateways": [
            {"gateway_id": g.gateway_id, **_rates(g.meters, g.online, g.online_seconds, g.observed_seconds)}
            for g in gateways
        ],
    }


@router.delete("/gateways/{gateway_id}", status_code=204, summary="Remove a gateway with its buses and meters")
async def delete_gateway(gateway_id: str, registry: Reg, fleet: Pollers) -> None:
    await registry.delete("gateway", gateway_id)
    fleet.refresh()


@router.delete("/buses/{bus_id}", status_code=204, summary="Remove a bus with its meters")
async def delete_bus(bus_id: str, registry: Reg, fleet: Pollers) -> None:
    await registry.delete("bus", bus_id)
    fleet.refresh()


@router.delete("/meters/{meter_id}", status_code=204, summary="Remove a meter")
async def delete_meter(meter_id: str, registry: Reg, fleet: Pollers) -> None:
    await registry.delete("meter", meter_id)
    fleet.refresh()


@router.post(
    "/registry/import",
    summary="Commission an estate from CSV (one line per meter); every line is checked, all or nothing",
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}},
)
async def import_csv(request: Request, registry: Reg, fleet: Pollers) -> Any:
    body = await request.body()
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return problem(422, "invalid CSV", "the file is not UTF-8 text", "invalid_csv", errors=[])
    rows, problems = estate_csv.parse(content)
    if problems:
        return problem(
            422,
            "invalid CSV",
            f"{len(problems)} line(s) are invalid; nothing was imported · {len(problems)} 行有误，未导入任何数据",
            "invalid_csv",
            errors=problems,
        )
    counts = await registry.import_estate(rows)
    fleet.refresh()
    return JSONResponse(counts)


@router.get("/registry/export", summary="The registry as CSV (the import format)")
async def export_csv(registry: Reg) -> Response:
    return Response(
        estate_csv.render(await registry.export_estate()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="estate.csv"'},
    )
