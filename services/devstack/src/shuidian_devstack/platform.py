"""The whole platform in one event loop (each service on its own port) for end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_alarm.app import create_app as alarm_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_collector.app import create_app as collector_app
from shuidian_collector.settings import CollectorSettings
from shuidian_control.app import create_app as control_app
from shuidian_control.settings import ControlSettings
from shuidian_devstack.infra import free_port, service_auth
from shuidian_gateway.adapters.live import Server as LiveServer
from shuidian_gateway.app import create_app as gateway_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_insights.app import create_app as insights_app
from shuidian_insights.settings import InsightsSettings

STAFF_KEY = "e2e-staff-key-0123456789abcdef"


@dataclass
class Platform:
    """URLs of the running services; `staff` is an HTTP client on the gateway with the staff key, `internal` one
    calling the backends directly, signed with service tokens (as `infra.TEST_SUBJECT`)."""

    urls: dict[str, str]
    staff: httpx.AsyncClient
    internal: httpx.AsyncClient
    apps: dict[str, FastAPI] = field(default_factory=dict)


async def _serve(
    app: FastAPI, port: int, server_class: type[uvicorn.Server] = uvicorn.Server
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = server_class(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("service stopped during start-up")
        await asyncio.sleep(0.02)
    return server, task


@contextlib.asynccontextmanager
async def platform(
    database_url: str, mqtt_url: str, *, instance: str = "e2e", overrides: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[Platform]:
    """Start collector, billing, control, alarm, insights and gateway in this event loop; stop them on exit."""
    overrides = overrides or {}
    ports = {name: free_port() for name in ("collector", "billing", "control", "alarm", "insights", "gateway")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr(database_url),
        "mqtt_url": mqtt_url,
        "instance_id": instance,
        "mqtt_clean_session": True,
    }

    def opts(name: str) -> dict[str, Any]:
        return {**common, "http_port": ports[name], **overrides.get(name, {})}

    apps = {
        "collector": collector_app(CollectorSettings(**opts("collector"))),
        "billing": billing_app(BillingSettings(**opts("billing"))),
        "control": control_app(ControlSettings(**opts("control"))),
        "alarm": alarm_app(AlarmSettings(**opts("alarm"))),
        "insights": insights_app(InsightsSettings(**opts("insights"), billing_url=urls["billing"])),
        "gateway": gateway_app(
            GatewaySettings(
                **opts("gateway"),
                staff_api_key=SecretStr(STAFF_KEY),
                collector_url=urls["collector"],
                billing_url=urls["billing"],
                control_url=urls["control"],
                alarm_url=urls["alarm"],
                insights_url=urls["insights"],
            )
        ),
    }
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    try:
        for name, app in apps.items():
            # The gateway's server ends live event streams at shutdown instead of waiting for them.
            servers.append(await _serve(app, ports[name], LiveServer if name == "gateway" else uvicorn.Server))
        async with (
            httpx.AsyncClient(base_url=urls["gateway"], headers={"Authorization": f"Bearer {STAFF_KEY}"}) as staff,
            httpx.AsyncClient(auth=service_auth({urls[n]: n for n in apps if n != "gateway"})) as internal,
        ):
            await wait_ready(internal, urls)
            yield Platform(urls, staff, internal, apps)
    finally:
        for server, _ in reversed(servers):
            server.should_exit = True
        await asyncio.gather(*(task for _, task in servers), return_exceptions=True)


async def wait_ready(client: httpx.AsyncClient, urls: dict[str, str], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        for url in urls.values():
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
