"""Interactive API docs that work without internet: Swagger UI (`/docs`) and ReDoc (`/redoc`) load their scripts
and styles from this service (`/docs/static/…`, the assets the `fastapi-offline` package ships), never a CDN."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

ASSETS = Path(str(files("fastapi_offline") / "static"))
STATIC = "/docs/static"


def serve_docs_offline(app: FastAPI) -> None:
    """Replace FastAPI's CDN-loading `/docs` and `/redoc` pages by ones served with local assets."""
    docs, redoc, openapi = app.docs_url or "/docs", app.redoc_url or "/redoc", app.openapi_url or "/openapi.json"
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in (docs, redoc))]
    app.mount(STATIC, StaticFiles(directory=ASSETS), name="docs-static")

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi,
            title=f"{app.title} · Swagger UI",
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon.png",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def redoc_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi,
            title=f"{app.title} · ReDoc",
            redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route(docs, swagger, include_in_schema=False)
    app.add_route(redoc, redoc_page, include_in_schema=False)
