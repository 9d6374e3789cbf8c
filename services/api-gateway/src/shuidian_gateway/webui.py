"""The built front-end (`web/dist`): the staff console at /console/ and the tenant portal at /portal/.

The gateway serves it itself rather than a separate static server: the apps call the API on the same
origin (no CORS, no second deployment to keep in step), and a page is a few files. Caching follows
the build: files under /assets/ carry a content hash in their name, so they are immutable for a
year; the two HTML pages are `no-cache` (revalidated every time, so a deploy shows at once). Every
answer carries a Content-Security-Policy that allows only this origin (no inline script; inline
styles, which Element Plus and Vant set on elements, are allowed) and the usual security headers.

Compression is done once, at build time: the build writes `<file>.br` and `<file>.gz` beside each
asset worth compressing (web/vite.config.ts), and a client that accepts one gets it as it is, with
`Content-Encoding` and `Vary: Accept-Encoding` — no CPU spent per request, and Brotli at its best
level, which would be too slow to do on the fly.

Where the build is: `GATEWAY_WEB_ROOT`, else the nearest `web/dist` holding a page above this
module (a source checkout, installed editable) or below the working directory; the container image
copies the build to /opt/app/web and its entry point names it.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable, Iterator
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
# Precompressed variants the build writes beside a file, best first: (suffix, Content-Encoding).
ENCODINGS: Final = ((".br", "br"), (".gz", "gzip"))


def _builds_above(start: Path) -> Iterator[Path]:
    for folder in (start, *start.parents):
        yield folder / "web" / "dist"


def default_root(module: Path = Path(__file__), cwd: Path | None = None) -> Path | None:
    """The nearest built front-end: `web/dist` (with a page in it) in a folder above this module — a
    source checkout — or above the working directory; None when neither has been built."""
    for build in (*_builds_above(module.resolve().parent), *_builds_above((cwd or Path.cwd()).resolve())):
        if any((build / f"{app}.html").is_file() for app in APPS):
            return build
    return None


class WebSettings(BaseSettings):
    """`GATEWAY_WEB_ROOT`: the built front-end; unset, the nearest web/dist that was built (`default_root`)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    web_root: Path | None = None

    def root(self) -> Path | None:
        return self.web_root if self.web_root is not None else default_root()


def accepted(header: str) -> set[str]:
    """The content codings an Accept-Encoding header accepts (q > 0); `*` stands for any."""
    codings: set[str] = set()
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name and quality > 0:
            codings.add(name.strip().lower())
    return codings


def _variant(request: Request, path: Path) -> tuple[Path, str | None, bool]:
    """The file to send for `path` — a precompressed variant when the client accepts one — its
    Content-Encoding, and whether variants exist (then the answer depends on Accept-Encoding)."""
    variants = [(path.with_name(path.name + suffix), coding) for suffix, coding in ENCODINGS]
    variants = [(file, coding) for file, coding in variants if file.is_file()]
    if not variants:
        return path, None, False
    codings = accepted(request.headers.get("accept-encoding", ""))
    for file, coding in variants:
        if coding in codings or "*" in codings:
            return file, coding, True
    return path, None, True


def _file(request: Request, path: Path, cache: str) -> Response:
    """The file (precompressed when the client accepts it), or a 304 when the browser's copy
    (If-None-Match) is current: how no-cache pages stay cheap."""
    sent, coding, varies = _variant(request, path)
    stat = sent.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}{"-" + coding if coding else ""}"'
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": etag}
    if varies:
        headers["Vary"] = "Accept-Encoding"
    if etag in (tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    if coding:
        headers["Content-Encoding"] = coding
    # The type of what was compressed, not of the .br / .gz file (Starlette adds the charset to text/*).
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(sent, headers=headers, stat_result=stat, media_type=media_type)


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
