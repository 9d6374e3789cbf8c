"""What every service's lifespan builds: engine, migrations, MQTT link, outbox, supervisor; and the
health, readiness, metrics and error-mapping surface every service exposes."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from shuidian_kit.db import create_engine, ping
from shuidian_kit.deadletters import DeadLetters
from shuidian_kit.errors import Conflict, NotFound
from shuidian_kit.httpmetrics import HttpMetrics
from shuidian_kit.migrations import upgrade
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_kit.supervisor import Supervisor
from shuidian_shared.errors import ShuidianError, error_body
from shuidian_shared.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Shared resources of one service instance, created in its lifespan and handed to requests."""

    service: str
    settings: ServiceSettings
    engine: AsyncEngine
    mqtt: MqttLink
    outbox: Outbox
    supervisor: Supervisor
    dead_letters: DeadLetters

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: ServiceSettings, *, service: str, schema: str, migrations: str
    ) -> AsyncIterator[Runtime]:
        engine = create_engine(
            settings.database_url.get_secret_value(),
            pool_size=settings.database_pool_size,
            application_name=f"shuidian-{service}",
        )
        try:
            await upgrade(engine, schema, migrations)
            mqtt = MqttLink(
                settings.mqtt_url,
                service=service,
                instance=settings.instance_id,
                clean_session=settings.mqtt_clean_session,
                tls_ca_file=settings.mqtt_tls_ca_file,
                tls_cert_file=settings.mqtt_tls_cert_file,
                tls_key_file=settings.mqtt_tls_key_file,
            )
            outbox = Outbox(engine, mqtt, schema)
            dead_letters = DeadLetters(engine, schema, service, instance=settings.instance_id, outbox=outbox)
            await dead_letters.create_table()
            mqtt.dead_letters = dead_letters
            supervisor = Supervisor(f"{service}-supervisor")
            supervisor.add("mqtt", mqtt.run)
            supervisor.add("outbox", outbox.run)
            yield cls(service, settings, engine, mqtt, outbox, supervisor, dead_letters)
        finally:
            await engine.dispose()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the background loops (after the service registered its subscriptions and loops)."""
        async with self.supervisor:
            if self.settings.tunes_gc:
                tune_gc(self.settings.gc_young_threshold)
            log.info("%s instance %s started", self.service, self.settings.instance_id)
            yield
        log.info("%s instance %s stopped", self.service, self.settings.instance_id)

    async def readiness(self) -> dict[str, bool]:
        return {
            "database": await ping(self.engine),
            "mqtt": self.mqtt.connected,
            "supervisor": self.supervisor.alive,
        }


def tune_gc(young_threshold: int) -> None:
    """Freeze what is alive now out of the collector's reach and collect far less often
    (see `ServiceSettings.gc_tuning`). Process-wide and idempotent.

    A service allocates many short-lived objects per message while it holds many long-lived ones
    (the framework; alarm's state cache holds millions), so the default thresholds run full
    collections that rescan them over and over: a quarter of alarm's evaluation CPU, and close to
    half of billing's CPU per reading, in their benchmarks.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 100)


RuntimeOf = Callable[[Request], Runtime]


def started(runtime: Runtime | None) -> Runtime:
    """The runtime a container holds once the app's lifespan built it (a container a test builds has none)."""
    if runtime is None:
        raise RuntimeError("this container was not built by the app's lifespan: it has no runtime")
    return runtime


class ReadyOut(BaseModel):
    ready: bool = Field(description="every check passed (200); otherwise 503 with the same body")
    checks: dict[str, bool] = Field(description="database, broker and each background loop by name")


class DeadLetterOut(BaseModel):
    id: int
    topic: str
    payload: str = Field(description="the message as received (UTF-8; undecodable bytes replaced)")
    reason: str
    error: str
    attempts: int
    parked_at: datetime
    replayed_at: datetime | None


def ops_router(runtime_of: RuntimeOf, *, guard: Sequence[Any] = ()) -> APIRouter:
    """`/healthz` (process is alive), `/readyz` (database, broker and loops are up), `/metrics`, and the
    dead letters (`/v1/dead-letters`) behind `guard` — dependencies the gateway, which faces the
    world, puts there (a backend refuses anything without a service token anyway).

    `runtime_of` reads the runtime from the service's typed container, the one thing its lifespan keeps on the
    app (`app.state`), so the runtime has one place."""
    router = APIRouter(tags=["operations"])

    # The image's tag (deploy/Dockerfile sets SHUIDIAN_VERSION): a rolling upgrade checks each replica runs it.
    version = os.environ.get("SHUIDIAN_VERSION", "dev")

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": version}

    @router.get(
        "/readyz",
        summary="Readiness: database reachable, broker connected, background loops alive",
        response_model=None,
        responses={200: {"model": ReadyOut}, 503: {"model": ReadyOut, "description": "not ready"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = await runtime_of(request).readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/dead-letters",
        summary="Messages parked because they could not be processed",
        response_model=list[DeadLetterOut],
        dependencies=list(guard),
        responses=_problems({422: "the request did not validate"}),
    )
    async def dead_letters(
        request: Request, pending: bool = True, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        letters = await runtime_of(request).dead_letters.list(pending_only=pending, limit=limit)
        return [letter.as_dict() for letter in letters]

    @router.post(
        "/v1/dead-letters/{letter_id}/replay",
        summary="Run a parked message through its handler again (after the cause is fixed)",
        status_code=204,
        dependencies=list(guard),
        responses=_problems(
            {
                404: "no such dead letter",
                409: "replayed already, or its handler failed again",
                422: "the request did not validate",
            }
        ),
    )
    async def replay(request: Request, letter_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> None:
        runtime = runtime_of(request)
        letter = await runtime.dead_letters.get(letter_id)
        if letter is None:
            raise NotFound(f"no dead letter {letter_id}")
        if letter.replayed_at is not None:
            raise Conflict(f"dead letter {letter_id} was replayed at {letter.replayed_at.isoformat()}")
        try:
            await runtime.mqtt.replay(letter)
        except Exception as err:
            raise Conflict(f"replaying dead letter {letter_id} failed again: {type(err).__name__}: {err}") from err
        await runtime.dead_letters.mark_replayed(letter_id)

    return router


def _problems(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for problem-details answers (RFC 9457)."""
    return {
        status: {"description": text, "content": {"application/problem+json": {"schema": {"type": "object"}}}}
        for status, text in described.items()
    }


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem-details response (`ErrorBody`), the one error format of every service."""
    body = error_body(status, code, detail, **extra)
    body["title"] = title
    return problem_response(body)


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem-details body as a response, with an error's extra headers (Retry-After, WWW-Authenticate)."""
    response = JSONResponse(body, status_code=body["status"], media_type="application/problem+json")
    response.headers.update(headers or {})
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Map errors to problem-details responses in one place: every `ShuidianError` (each package's root derives
    from it) answered as it says, validation and framework errors, and anything unexpected."""

    async def on_shuidian_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ShuidianError)
        if not exc.answered:  # an error that does not say how to answer is an internal one
            return await on_unexpected(request, exc)
        return problem_response(exc.problem_body(), exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return problem(422, "invalid request", "the request did not validate", "validation_error", errors=errors)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        # Framework errors (a body that is not JSON, an unknown route, a wrong method) in the same format.
        assert isinstance(exc, StarletteHTTPException)
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = problem(exc.status_code, code.replace("_", " "), str(exc.detail), code)
        response.headers.update(exc.headers or {})
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error", "an unexpected error occurred", "internal_error")

    app.add_exception_handler(ShuidianError, on_shuidian_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def serve(app: FastAPI, settings: ServiceSettings, service: str, server_class: type[Any] | None = None) -> None:
    """Run one service process (its `python -m` entry point); `server_class` is a uvicorn.Server subclass
    for a service that must do something before uvicorn waits for open connections at shutdown."""
    import uvicorn

    from shuidian_kit.logs import configure_logging

    configure_logging(service, settings.log_level)
    app.add_middleware(HttpMetrics, service=service)
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from any local peer as the client's
    # address; a service that sits behind a proxy decides whom to believe itself (GATEWAY_TRUSTED_PROXIES).
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
    )
    (server_class or uvicorn.Server)(config).run()
