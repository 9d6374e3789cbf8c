"""Collector's HTTP API: the device registry and device state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from shuidian_collector.fleet import Fleet
from shuidian_collector.registry import BusConfig, BusProtocol, MeterConfig, Registry
from shuidian_kit.errors import NotFound
from shuidian_kit.service import runtime_of
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
    online: bool
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
