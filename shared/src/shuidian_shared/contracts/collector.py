"""The collector's side of the gateway contract: registry records, read back for If-Match; device state and the
online-rate report (as the collector's `api/schemas.py` writes them); a gateway's polling status."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field


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


class DeviceStateOut(BaseModel):
    """What the collector last knew of a meter: online, relay or valve, keep-power."""

    meter_id: str
    gateway_id: str | None = None
    online: bool
    reason: str | None = None
    relay: str | None
    valve: str | None
    keep_power: bool | None
    last_reading_at: datetime | None
    updated_at: datetime


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
    """Meters online now, overall and per gateway, and availability over [start, end)."""

    at: datetime
    start: datetime
    end: datetime
    total: OnlineRateOut
    gateways: list[GatewayOnlineRateOut]


class GatewayStatusOut(BaseModel):
    """Whether anything behind a gateway answers (from the collector instance that polls it)."""

    gateway_id: str
    online: bool
    meters: int = Field(description="meters on the gateway's buses")
    buses: list[str]
