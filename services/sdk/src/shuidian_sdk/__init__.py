"""Typed Python client for the Shuidian public API (async and sync).

async with AsyncShuidianClient("https://api.example") as client:
    await client.login("13800000000", "…")
    balance = await client.my_balance("A101")
    async for event in client.live():  # ready, balance, meter_state, alarm
        ...
"""

from shuidian_sdk.client import AsyncShuidianClient, ShuidianClient
from shuidian_sdk.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RateLimited,
    ServerError,
    ShuidianError,
)
from shuidian_sdk.live import LiveEvent
from shuidian_sdk.webhooks import verify_signature

__all__ = [
    "AsyncShuidianClient",
    "AuthenticationError",
    "Conflict",
    "InvalidRequest",
    "LiveEvent",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "RateLimited",
    "ServerError",
    "ShuidianClient",
    "ShuidianError",
    "verify_signature",
]
