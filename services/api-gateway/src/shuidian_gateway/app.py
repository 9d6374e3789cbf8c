"""Composition root of the API gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from shuidian_gateway.api import router
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.upstream import UpstreamError, Upstreams
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, problem

SERVICE = "gateway"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_gateway") / "migrations")
        async with (
            Runtime.open(settings, service=SERVICE, schema="gateway", migrations=migrations) as runtime,
            httpx.AsyncClient(timeout=settings.upstream_timeout_seconds) as client,
        ):
            app.state.runtime = runtime
            app.state.settings = settings
            app.state.upstreams = Upstreams(
                client,
                {
                    "collector": settings.collector_url,
                    "billing": settings.billing_url,
                    "control": settings.control_url,
                    "alarm": settings.alarm_url,
                },
            )
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian API",
        summary="水电预付费平台开放接口 · Public API of the Shuidian prepaid metering platform",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    async def on_upstream(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UpstreamError)
        if exc.body and "status" in exc.body:
            return JSONResponse(exc.body, status_code=exc.status_code, media_type="application/problem+json")
        return problem(exc.status_code, exc.code.replace("_", " "), exc.detail, exc.code)

    app.add_exception_handler(UpstreamError, on_upstream)

    @app.middleware("http")
    async def audit_writes(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method in WRITE_METHODS and request.url.path.startswith("/api/"):
            runtime: Runtime = request.app.state.runtime
            async with runtime.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO gateway.audit_log (principal, method, path, status, client_address, idempotency_key) "
                        "VALUES (:p, :m, :u, :s, :c, :k)"
                    ),
                    {
                        "p": getattr(request.state, "principal", "anonymous"),
                        "m": request.method,
                        "u": request.url.path,
                        "s": response.status_code,
                        "c": request.client.host if request.client else None,
                        "k": request.headers.get("idempotency-key"),
                    },
                )
        return response

    app.include_router(ops_router())
    app.include_router(router)
    return app
