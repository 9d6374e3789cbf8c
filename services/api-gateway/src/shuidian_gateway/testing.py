"""A gateway on a real socket in front of the fake backends, with one user per role signed in:
the harness of the gateway's, the SDK's and the benchmark's tests (tests only)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_gateway.adapters.fakes import FakeBackends, create_fake_backends
from shuidian_gateway.adapters.live import Server
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_shared.messages import (
    AlarmEvent,
    AlarmSeverity,
    AlarmState,
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    DeviceState,
    RelayState,
)

STAFF_KEY = "harness-staff-key-0123456789abcdef"
JWT_SECRET = "harness-jwt-secret-0123456789abcdef-0123456789"
PASSWORD = "correct horse battery staple"
# name → (role, estates, tenant_id)
ROSTER: dict[str, tuple[str, list[str], str | None]] = {
    "admin": ("system_admin", ["*"], None),
    "manager_e1": ("estate_manager", ["E1"], None),
    "cashier": ("cashier", ["*"], None),
    "maintenance": ("maintenance", ["*"], None),
    "finance": ("finance", ["*"], None),
    "tenant_a": ("tenant", [], "T-A"),
    "tenant_b": ("tenant", [], "T-B"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: FastAPI, port: int) -> AsyncIterator[None]:
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await task


@dataclass
class Harness:
    url: str
    fake: FakeBackends
    settings: GatewaySettings
    app: FastAPI
    suffix: str
    user_ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    def username(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def client(self, name: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client on the gateway, signed in as `name` (a roster user), or anonymous."""
        headers = dict(kwargs.pop("headers", {}))
        if name == "bootstrap":
            headers["Authorization"] = f"Bearer {STAFF_KEY}"
        elif name is not None:
            headers["Authorization"] = f"Bearer {self.tokens[name]['access_token']}"
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kwargs)

    async def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url) as client:
            return await client.post(
                "/v1/auth/token", data={"grant_type": "password", "username": self.username(name), "password": password}
            )


@asynccontextmanager
async def gateway_harness(
    database_url: str, mqtt_url: str, *, complete_backends: bool = False, **overrides: Any
) -> AsyncIterator[Harness]:
    """Fake backends and a gateway on real sockets, every roster user created and signed in."""
    fake = FakeBackends(complete=complete_backends)
    backend_port, gateway_port = free_port(), free_port()
    backends = f"http://127.0.0.1:{backend_port}"
    options: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr(database_url),
        "mqtt_url": mqtt_url,
        "instance_id": f"gw-harness-{gateway_port}",
        "mqtt_clean_session": True,
        "http_port": gateway_port,
        "staff_api_key": SecretStr(STAFF_KEY),
        "jwt_secret": SecretStr(JWT_SECRET),
        "login_attempts_per_minute": 10_000,
        "collector_url": backends,
        "billing_url": backends,
        "control_url": backends,
        "alarm_url": backends,
        "insights_url": backends,
        "upstream_timeout_seconds": 5.0,
        **overrides,
    }
    settings = GatewaySettings(**options)
    app = create_app(settings)
    async with serve(create_fake_backends(fake), backend_port), serve(app, gateway_port):
        harness = Harness(f"http://127.0.0.1:{gateway_port}", fake, settings, app, secrets.token_hex(4))
        async with harness.client("bootstrap") as admin:
            for name, (role, estates, tenant_id) in ROSTER.items():
                body: dict[str, Any] = {"username": harness.username(name), "password": PASSWORD, "role": role}
                body.update({"tenant_id": tenant_id} if tenant_id else {"estates": estates})
                created = await admin.post("/v1/users", json=body)
                created.raise_for_status()
                harness.user_ids[name] = created.json()["user_id"]
        for name in ROSTER:
            signed_in = await harness.login(name)
            signed_in.raise_for_status()
            harness.tokens[name] = signed_in.json()
        yield harness


# -- events as the services publish them, for live-push and webhook tests ------------------------------


def meter_state(meter_id: str) -> DeviceState:
    """A meter online with its relay open (supply cut)."""
    return DeviceState(source="test", meter_id=meter_id, gateway_id="GW1", online=True, relay=RelayState.OPEN)


def balance_event(
    account_id: str, sequence: int = 9, *, level: BalanceLevel = BalanceLevel.EXHAUSTED, balance: str = "-0.10"
) -> BalanceEvent:
    """An account reaching `level` (the event kind of the same name) at `balance`."""
    return BalanceEvent(
        source="test",
        account_id=account_id,
        kind=BalanceEventKind(level.value),
        level=level,
        balance=Decimal(balance),
        sequence=sequence,
        meters=(),
    )


def alarm_event(source_id: str, *, low: bool = False) -> AlarmEvent:
    """A raised balance alarm: exhausted (critical) or, with `low`, low balance (warning)."""
    return AlarmEvent(
        source="test",
        alarm_id=uuid.uuid4(),
        alarm_type="balance_low" if low else "balance_exhausted",
        source_id=source_id,
        severity=AlarmSeverity.WARNING if low else AlarmSeverity.CRITICAL,
        state=AlarmState.ACTIVE,
        message_zh="余额不足" if low else "余额耗尽",
        message_en="balance low" if low else "balance exhausted",
    )
