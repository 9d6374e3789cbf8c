"""The collector's side of the gateway contract: registry records, read back for If-Match."""

from __future__ import annotations

from pydantic import BaseModel


class GatewayRecordOut(BaseModel):
    gateway_id: str
    name: str
    shard: int | None


class BusRecordOut(BaseModel):
    bus_id: str
    gateway_id: str
    host: str
    port: int
    protocol: str
    baud: int
    timeout_ms: int
    retries: int


class MeterRecordOut(BaseModel):
    meter_id: str
    bus_id: str
    address: str
    model: str
    utility: str
    poll_interval_s: int
    enabled: bool
