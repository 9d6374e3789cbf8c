"""Request and response bodies of the collector's HTTP API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from shuidian_collector.domain.devices import BusProtocol
from shuidian_shared.messages import Identifier, Utility


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
