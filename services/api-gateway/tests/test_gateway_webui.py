"""The gateway serves the built front-end: pages with no-cache, hashed assets immutable, CSP and
security headers on every answer, nothing outside the build, and the API's OpenAPI unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shuidian_gateway import webui
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A build as vite writes it: two pages and a hashed asset."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "console.html").write_text('<!doctype html><div id="app">console</div>', encoding="utf-8")
    (tmp_path / "portal.html").write_text('<!doctype html><div id="app">portal</div>', encoding="utf-8")
    (tmp_path / "assets" / "console-Cncrmw8m.js").write_text("console.log(1)", encoding="utf-8")
    (tmp_path.parent / "secret.txt").write_text("not for the web", encoding="utf-8")
    return tmp_path


@pytest.fixture
async def client(build: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("GATEWAY_WEB_ROOT", str(build))
    app = create_app(GatewaySettings(environment="dev"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
        yield c


def assert_secured(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/console/", "console"),
        ("/console/rooms/room-A101", "console"),  # a deep link: the app's router draws it
        ("/portal/", "portal"),
        ("/portal/usage", "portal"),
    ],
)
async def test_pages_are_served_with_no_cache_and_security_headers(
    client: httpx.AsyncClient, path: str, text: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert text in response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert "etag" in response.headers  # revalidation is cheap: 304 when unchanged
    assert_secured(response)


async def test_an_unchanged_page_revalidates_to_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/console/")
    again = await client.get("/console/", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


async def test_hashed_assets_are_immutable(client: httpx.AsyncClient) -> None:
    response = await client.get("/assets/console-Cncrmw8m.js")
    assert response.status_code == 200
    assert response.text == "console.log(1)"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"].startswith("text/javascript")
    assert_secured(response)


@pytest.mark.parametrize(
    "path", ["/assets/missing.js", "/assets/../console.html", "/assets/%2e%2e/%2e%2e/secret.txt", "/assets/"]
)
async def test_nothing_outside_the_assets_is_an_asset(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404 or "not for the web" not in response.text
    assert "not for the web" not in response.text


async def test_the_bare_app_path_redirects_to_its_folder(client: httpx.AsyncClient) -> None:
    response = await client.get("/console")
    assert response.status_code == 308
    assert response.headers["location"] == "/console/"


async def test_the_openapi_does_not_list_the_pages(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/console", "/portal", "/assets"))]


async def test_without_a_build_the_api_runs_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WEB_ROOT", str(tmp_path / "nowhere"))
    app = create_app(GatewaySettings(environment="dev"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        assert (await client.get("/console/")).status_code == 404


def test_an_app_whose_page_was_not_built_is_not_served(build: Path) -> None:
    (build / "portal.html").unlink()
    paths = {getattr(route, "path", "") for route in webui.router(build).routes}
    assert "/console/{rest:path}" in paths
    assert not [p for p in paths if p.startswith("/portal")]
