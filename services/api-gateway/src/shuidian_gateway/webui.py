"""The built front-end (`web/dist`): the staff console at /console/ and the tenant portal at /portal/.

The gateway serves it itself rather than a separate static server: the apps call the API on the same
origin (no CORS, no second deployment to keep in step), and a page is a few files. Caching follows
the build: files under /assets/ carry a content hash in their name, so they are immutable for a
year; the two HTML pages are `no-cache` (revalidated every time, so a deploy shows at once). Every
answer carries a Content-Security-Policy that allows only this origin (no inline script; inline
styles, which Element Plus and Vant set on elements, are allowed) and the usual security headers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

APPS: Final = ("console", "portal")
CSP: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "frame-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
IMMUTABLE: Final = "public, max-age=31536000, immutable"
NO_CACHE: Final = "no-cache"
# The repository's build (services/api-gateway/src/shuidian_gateway/webui.py → repo/web/dist).
REPO_BUILD: Final = Path(__file__).resolve().parents[4] / "web" / "dist"


class WebSettings(BaseSettings):
    """`GATEWAY_WEB_ROOT`: the built front-end; unset, the repository's web/dist when it was built."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    web_root: Path | None = None

    def root(self) -> Path | None:
        return self.web_root if self.web_root is not None else (REPO_BUILD if REPO_BUILD.is_dir() else None)


def _file(request: Request, path: Path, cache: str) -> Response:
    """The file, or a 304 when the browser's copy (If-None-Match) is current: how no-cache pages stay cheap."""
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": etag}
    if etag in (tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, headers=headers, stat_result=stat)


def _page(page: Path) -> Callable[[Request, str], Awaitable[Response]]:
    async def serve(request: Request, rest: str) -> Response:
        return _file(request, page, NO_CACHE)  # every path under the app is the app: its router draws it

    return serve


def _redirect(to: str) -> Callable[[], Awaitable[RedirectResponse]]:
    async def redirect() -> RedirectResponse:
        return RedirectResponse(to, status_code=308)

    return redirect


def router(root: Path) -> APIRouter:
    """Routes for the pages of `root` (only the apps whose HTML is there) and its hashed assets."""
    web = APIRouter(include_in_schema=False)
    assets = (root / "assets").resolve()

    @web.api_route("/assets/{name:path}", methods=["GET", "HEAD"])
    async def asset(request: Request, name: str) -> Response:
        path = (assets / name).resolve()
        if not path.is_relative_to(assets) or not path.is_file():  # no way out of assets/ (../, symlinks)
            raise HTTPException(404, "no such asset")
        return _file(request, path, IMMUTABLE)

    for app in APPS:
        page = root / f"{app}.html"
        if page.is_file():
            web.add_api_route(f"/{app}", _redirect(f"/{app}/"), methods=["GET", "HEAD"])
            web.add_api_route(f"/{app}/{{rest:path}}", _page(page), methods=["GET", "HEAD"])
    return web


def install(app: FastAPI, settings: WebSettings | None = None) -> Path | None:
    """Serve the front-end when it was built; otherwise the API runs alone (and says so once)."""
    root = (settings or WebSettings()).root()
    if root is None or not root.is_dir():
        log.info("no built front-end (GATEWAY_WEB_ROOT or web/dist): /console/ and /portal/ are not served")
        return None
    app.include_router(router(root))
    return root
