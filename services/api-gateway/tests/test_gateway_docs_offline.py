"""`/docs` and `/redoc` of every service work without internet: each page names only assets the service itself
serves (no CDN), and the gateway serves them."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import SecretStr
from starlette.routing import Route

from shuidian_alarm.app import create_app as alarm_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_collector.app import create_app as collector_app
from shuidian_collector.settings import CollectorSettings
from shuidian_control.app import create_app as control_app
from shuidian_control.settings import ControlSettings
from shuidian_gateway.app import create_app as gateway_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import JWT_SECRET, STAFF_KEY
from shuidian_kit.docs import ASSETS, STATIC

COMMON: dict[str, Any] = {
    "environment": "test",
    "database_url": SecretStr("postgresql://nobody@127.0.0.1:1/none"),
    "mqtt_url": "mqtt://127.0.0.1:1",
}
SERVICES = {
    "collector": lambda: collector_app(CollectorSettings(**COMMON)),
    "billing": lambda: billing_app(BillingSettings(**COMMON)),
    "control": lambda: control_app(ControlSettings(**COMMON)),
    "alarm": lambda: alarm_app(AlarmSettings(**COMMON)),
    "gateway": lambda: gateway_app(
        GatewaySettings(**COMMON, staff_api_key=SecretStr(STAFF_KEY), jwt_secret=SecretStr(JWT_SECRET))
    ),
}
# Every URL a docs page loads: src= and href= attributes, and the `url:` / spec URL handed to the script.
URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]|spec-url=["']([^"']+)["']""")


def urls_of(html: str) -> list[str]:
    return [next(g for g in match.groups() if g) for match in URLS.finditer(html)]


async def page(app: FastAPI, path: str) -> str:
    """The page the app's own route renders (called directly: backends refuse unsigned requests)."""
    (route,) = [r for r in app.routes if isinstance(r, Route) and r.path == path]
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    response = await route.endpoint(Request(scope))
    body: bytes = response.body
    return body.decode()


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_nothing_from_outside(service: str, path: str) -> None:
    html = await page(SERVICES[service](), path)
    urls = urls_of(html)
    assert any(u.startswith(STATIC) for u in urls), html  # the page does load its assets
    assert [u for u in urls if not u.startswith("/")] == []  # none from another host
    for url in urls:
        if url.startswith(STATIC):
            asset = ASSETS / url.removeprefix(STATIC + "/")
            assert asset.is_file(), url


async def test_the_gateway_serves_its_docs_assets() -> None:
    transport = httpx.ASGITransport(app=SERVICES["gateway"]())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for path in ("/docs", "/redoc"):
            html = await client.get(path)
            assert html.status_code == 200
            for url in urls_of(html.text):
                if url.startswith(STATIC):
                    asset = await client.get(url)
                    assert asset.status_code == 200, url
                    assert len(asset.content) > 1000, url
