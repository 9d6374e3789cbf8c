"""The gateway serves the built front-end: pages with no-cache, hashed assets immutable, the build's
precompressed variants to clients that accept them, CSP and security headers on every answer,
nothing outside the build, the build found without configuration, and the API's OpenAPI unchanged."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shuidian_gateway import webui
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings


def write_build(tmp_path: Path) -> Path:
    """A build as vite writes it: two pages and hashed assets."""
    (tmp_path / "assets").mkdir(parents=True)
    (tmp_path / "console.html").write_text('<!doctype html><div id="app">console</div>', encoding="utf-8")
    (tmp_path / "portal.html").write_text('<!doctype html><div id="app">portal</div>', encoding="utf-8")
    (tmp_path / "assets" / "console-Cncrmw8m.js").write_text("console.log(1)", encoding="utf-8")
    # A chunk the build compressed: gzip and Brotli beside it (the Brotli bytes are opaque here).
    chunk = b"export const big = 1;\n" * 200
    (tmp_path / "assets" / "vendor-Dk3jf0aa.js").write_bytes(chunk)
    (tmp_path / "assets" / "vendor-Dk3jf0aa.js.gz").write_bytes(gzip.compress(chunk))
    (tmp_path / "assets" / "vendor-Dk3jf0aa.js.br").write_bytes(b"brotli:" + chunk[:20])
    (tmp_path / "assets" / "console-Q1w2e3r4.css").write_bytes(b"a{color:red}" * 100)
    (tmp_path / "assets" / "console-Q1w2e3r4.css.gz").write_bytes(gzip.compress(b"a{color:red}" * 100))
    (tmp_path.parent / "secret.txt").write_text("not for the web", encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
async def client(build: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the module (building the gateway's routes takes seconds on a busy machine)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_WEB_ROOT", str(build))
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
    ("accept", "coding"),
    [
        ("gzip, deflate, br, zstd", "br"),  # a browser: the smallest variant
        ("gzip", "gzip"),
        ("br;q=0, gzip;q=0.5", "gzip"),  # q=0 refuses
        ("*", "br"),
        ("identity", None),
        ("", None),
    ],
)
async def test_a_compressed_variant_goes_to_clients_that_accept_it(
    client: httpx.AsyncClient, accept: str, coding: str | None
) -> None:
    response = await client.get("/assets/vendor-Dk3jf0aa.js", headers={"Accept-Encoding": accept})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == coding
    assert response.headers["vary"] == "Accept-Encoding"  # caches keep one copy per coding
    assert response.headers["content-type"].startswith("text/javascript")  # the chunk's type, not gzip's
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    raw = response.content if coding is None else None
    if coding == "gzip":
        raw = response.content  # httpx decoded it
    if coding != "br":
        assert raw == b"export const big = 1;\n" * 200
    assert_secured(response)


async def test_each_coding_has_its_own_etag(client: httpx.AsyncClient) -> None:
    plain = await client.get("/assets/vendor-Dk3jf0aa.js", headers={"Accept-Encoding": "identity"})
    zipped = await client.get("/assets/vendor-Dk3jf0aa.js", headers={"Accept-Encoding": "gzip"})
    assert plain.headers["etag"] != zipped.headers["etag"]
    again = await client.get(
        "/assets/vendor-Dk3jf0aa.js", headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]}
    )
    assert (again.status_code, again.headers["vary"]) == (304, "Accept-Encoding")
    other = await client.get(
        "/assets/vendor-Dk3jf0aa.js", headers={"Accept-Encoding": "identity", "If-None-Match": zipped.headers["etag"]}
    )
    assert other.status_code == 200  # a gzip copy is not the identity copy


async def test_a_css_with_only_gzip_and_a_file_without_variants(client: httpx.AsyncClient) -> None:
    css = await client.get("/assets/console-Q1w2e3r4.css", headers={"Accept-Encoding": "br, gzip"})
    assert (css.headers["content-encoding"], css.content) == ("gzip", b"a{color:red}" * 100)
    assert css.headers["content-type"].startswith("text/css")
    small = await client.get("/assets/console-Cncrmw8m.js", headers={"Accept-Encoding": "br, gzip"})
    assert "content-encoding" not in small.headers
    assert "vary" not in small.headers  # nothing to choose between


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


def test_an_app_whose_page_was_not_built_is_not_served(tmp_path: Path) -> None:
    build = write_build(tmp_path / "dist")
    (build / "portal.html").unlink()
    paths = {getattr(route, "path", "") for route in webui.router(build).routes}
    assert "/console/{rest:path}" in paths
    assert not [p for p in paths if p.startswith("/portal")]


def test_the_build_is_found_above_the_module_or_the_working_directory(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    module = checkout / "services" / "api-gateway" / "src" / "shuidian_gateway" / "webui.py"
    module.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert webui.default_root(module, cwd=elsewhere) is None  # nothing built anywhere
    (checkout / "web" / "dist").mkdir(parents=True)
    assert webui.default_root(module, cwd=elsewhere) is None  # an empty or half-written build is no build
    (checkout / "web" / "dist" / "portal.html").write_text("<!doctype html>")
    assert webui.default_root(module, cwd=elsewhere) == checkout / "web" / "dist"
    # Installed as a package (site-packages): the working directory's checkout.
    installed = tmp_path / "venv" / "lib" / "site-packages" / "shuidian_gateway" / "webui.py"
    installed.parent.mkdir(parents=True)
    assert webui.default_root(installed, cwd=checkout / "services") == checkout / "web" / "dist"
    assert webui.default_root(installed, cwd=elsewhere) is None


def test_the_image_copies_the_build_where_its_entry_point_names_it() -> None:
    repo = Path(__file__).resolve().parents[3]
    dockerfile = (repo / "deploy" / "Dockerfile").read_text()
    entrypoint = (repo / "deploy" / "docker" / "entrypoint.sh").read_text()
    assert "COPY web/dis[t] /opt/app/web/" in dockerfile
    assert 'GATEWAY_WEB_ROOT="${GATEWAY_WEB_ROOT:-/opt/app/web}"' in entrypoint
