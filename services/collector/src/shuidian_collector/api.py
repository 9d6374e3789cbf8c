"""Collector's HTTP API: the device registry and device state."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import text

from shuidian_collector import estate_csv, reports
from shuidian_collector.fleet import Fleet
from shuidian_collector.registry import BusConfig, BusProtocol, MeterConfig, Registry
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.errors import NotFound, ServiceError
from shuidian_kit.service import problem, runtime_of
from shuidian_shared.contracts import collector as contracts
from shuidian_shared.messages import Identifier, Utility

router = APIRouter(prefix="/v1", tags=["registry"])


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


Reg = Annotated[Registry, Depends(_registry)]
Pollers = Annotated[Fleet, Depends(_fleet)]


class GatewayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    shard: int | None = Field(default=None, ge=0, description="pin to a collector shard; default: by hash of the id")


class BusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway_id: Identifier
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    protocol: BusProtocol
    baud: int = Field(default=2400, ge=300, le=115200)
    timeout_ms: int = Field(default=1000, ge=50, le=30000)
    retries: int = Field(default=1, ge=0, le=5)


class MeterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bus_id: Identifier
    address: str = Field(min_length=1, max_length=14, pattern=r"^[0-9A-Fa-f]+$")
    model: str = Field(min_length=1, max_length=64)
    utility: Utility
    poll_interval_s: int = Field(default=60, ge=1, le=86400)


class DeviceStateOut(BaseModel):
    meter_id: str
    gateway_id: str | None = None
    online: bool
    reason: str | None = None
    relay: str | None
    valve: str | None
    keep_power: bool | None
    last_reading_at: datetime | None
    updated_at: datetime


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


async def _record(request: Request, sql: str, key: str, what: str) -> dict[str, Any]:
    async with runtime_of(request).engine.connect() as conn:
        row = (await conn.execute(text(sql), {"k": key})).first()
    if row is None:
        raise NotFound(f"no {what} {key}")
    return row._asdict()


@router.get("/gateways/{gateway_id}", response_model=contracts.GatewayRecordOut, summary="A registered gateway")
async def get_gateway(gateway_id: str, request: Request) -> Any:
    sql = "SELECT gateway_id, name, shard FROM collector.gateways WHERE gateway_id = :k"
    return await _record(request, sql, gateway_id, "gateway")


@router.get("/buses/{bus_id}", response_model=contracts.BusRecordOut, summary="A registered RS-485 bus")
async def get_bus(bus_id: str, request: Request) -> Any:
    sql = (
        "SELECT bus_id, gateway_id, host, port, protocol, baud, timeout_ms, retries FROM collector.buses "
        "WHERE bus_id = :k"
    )
    return await _record(request, sql, bus_id, "bus")


@router.get("/meters/{meter_id}", response_model=contracts.MeterRecordOut, summary="A registered meter")
async def get_meter(meter_id: str, request: Request) -> Any:
    sql = (
        "SELECT meter_id, bus_id, address, model, utility, poll_interval_s, enabled FROM collector.meters "
        "WHERE meter_id = :k"
    )
    return await _record(request, sql, meter_id, "meter")


@router.get(
    "/meters/{meter_id}/state", response_model=DeviceStateOut, tags=["devices"], summary="Last known device state"
)
async def state(meter_id: str, request: Request) -> Any:
    async with runtime_of(request).engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT * FROM collector.device_state WHERE meter_id = :m"), {"m": meter_id})
        ).first()
    if row is None:
        raise NotFound(f"no state for meter {meter_id}")
    return row._asdict()


@router.get("/meters", response_model=list[DeviceStateOut], tags=["devices"], summary="Device state of every meter")
async def states(request: Request, gateway_id: str | None = None, online: bool | None = None) -> Any:
    async with runtime_of(request).engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT * FROM collector.device_state WHERE (CAST(:g AS text) IS NULL OR gateway_id = :g) "
                "AND (CAST(:o AS boolean) IS NULL OR online = :o) ORDER BY meter_id"
            ),
            {"g": gateway_id, "o": online},
        )
        return [row._asdict() for row in rows]


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


class OnlineRateOut(BaseModel):
    meters: int = Field(description="registered meters")
    online: int = Field(description="meters online now")
    online_rate: Decimal | None = Field(description="online ÷ meters now (null without meters)")
    availability: Decimal | None = Field(
        description="share of the observed time the meters were online in the window (null: nothing observed)"
    )
    observed_seconds: float = Field(description="meter-seconds of the window with a known state")
    online_seconds: float = Field(description="meter-seconds of the window online (availability's numerator)")


class GatewayOnlineRateOut(OnlineRateOut):
    gateway_id: str


class DeviceOnlineRateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "at": "2026-12-06T10:00:00Z",
                    "start": "2026-12-05T10:00:00Z",
                    "end": "2026-12-06T10:00:00Z",
                    "total": {
                        "meters": 80,
                        "online": 78,
                        "online_rate": "0.9750",
                        "availability": "0.9912",
                        "observed_seconds": 6912000.0,
                        "online_seconds": 6851174.4,
                    },
                    "gateways": [
                        {
                            "gateway_id": "gw-a",
                            "meters": 40,
                            "online": 38,
                            "online_rate": "0.9500",
                            "availability": "0.9824",
                            "observed_seconds": 3456000.0,
                            "online_seconds": 3395174.4,
                        }
                    ],
                }
            ]
        }
    )

    at: datetime
    start: datetime
    end: datetime
    total: OnlineRateOut
    gateways: list[GatewayOnlineRateOut]


def _rates(meters: int, online: int, up: float, seen: float) -> dict[str, Any]:
    return {
        "meters": meters,
        "online": online,
        "online_rate": reports.rate(online, meters),
        "availability": reports.rate(up, seen),
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
    request: Request,
    gateway_id: Identifier | None = None,
    meter_id: Annotated[
        list[Identifier] | None, Query(max_length=1000, description="only these meters (repeat the parameter)")
    ] = None,
    start: Annotated[AwareDatetime | None, Query(description="window start (default: end − 24 h)")] = None,
    end: Annotated[AwareDatetime | None, Query(description="window end (default: now)")] = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    end = end or now
    start = start or end - reports.DEFAULT_WINDOW
    if end <= start:
        raise ServiceError("时间窗口无效 · end must be after start", code="invalid_window")
    if end - start > reports.MAX_WINDOW:
        raise ServiceError("时间窗口过长 · the window is at most 366 days", code="invalid_window")
    settings: CollectorSettings = request.app.state.settings
    reports.refuse_before_retention(start, now, settings.online_edges_retention_days)
    report = await reports.device_online_report(runtime_of(request).engine, start, min(end, now), gateway_id, meter_id)
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
