"""Composition root of the API gateway."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from shuidian_gateway import webui
from shuidian_gateway.adapters import live
from shuidian_gateway.adapters.audit import AuditWrites
from shuidian_gateway.adapters.idempotency import IdempotencyStore
from shuidian_gateway.adapters.identity import Identity
from shuidian_gateway.adapters.readcache import ReadCache, VerifiedTokens
from shuidian_gateway.adapters.scopes import TenantScopes
from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.adapters.webhooks import Webhooks
from shuidian_gateway.api import (
    routes_identity,
    routes_insights,
    routes_live,
    routes_me,
    routes_operations,
    routes_payments,
    routes_staff,
    routes_tariff_plans,
    routes_webhooks,
)
from shuidian_gateway.api.asyncapi import AsyncApiDocument, document
from shuidian_gateway.api.auth import require
from shuidian_gateway.api.conventions import ERRORS, RefuseNul, install_allow_header, install_cors
from shuidian_gateway.api.deps import Container, container_of
from shuidian_gateway.domain.policy import Action
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.docs import serve_docs_offline
from shuidian_kit.service import Runtime, install_error_handlers, ops_router, problem
from shuidian_kit.service_auth import ServiceTokens
from shuidian_kit.urlguard import guarded_client
from shuidian_shared import topics
from shuidian_shared.contracts.insights import MonthlyReportReady
from shuidian_shared.messages import AlarmEvent, BalanceEvent, CommandResult, CommandUpdate, DeviceState

log = logging.getLogger(__name__)
SERVICE = "gateway"
VERSION = "1.0.0"
DESCRIPTION = """
水电预付费平台开放接口 · The public API of the Shuidian prepaid metering platform.

* **Sign in**: `POST /v1/auth/token` (OAuth2 password grant) gives a 15-minute access token and a
  one-time refresh token; send `Authorization: Bearer <access token>`. Integrators send an API key
  (`sk_…`) the same way; its scopes are the actions it may perform.
* **Tenants** use `/v1/me/…` (their rooms, meters, balance, usage, bills, top-ups, alarms) and live
  push at `/v1/me/live`: server-sent events (`GET`, `text/event-stream`) or a WebSocket on the same
  path. Browsers, whose `EventSource` and `WebSocket` cannot send headers, connect with `?ticket=`, a
  single-use ticket from `POST /v1/me/live/tickets`; access tokens never go in a URL. **Staff and
  integrators** use the other `/v1` routes; each names the action it needs (`x-required-action`).
* **Errors** are RFC 9457 problem documents (`application/problem+json`) with a stable `code`.
* **Lists** take `limit` and `cursor` (and `sort`, filters) and return `{items, next_cursor}`.
* **Money and command POSTs** need an `Idempotency-Key`: a replay returns the original response,
  the same key with a different request is a 409. Mutable resources carry an `ETag`; send it as
  `If-Match` to update safely (412 if it changed).
* MQTT topics and payloads: the AsyncAPI document at `/asyncapi.json`.
"""


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrations = str(files("shuidian_gateway") / "migrations")
        limits = httpx.Limits(
            max_connections=settings.upstream_connections, max_keepalive_connections=settings.upstream_connections
        )
        async with (
            Runtime.open(settings, service=SERVICE, schema="gateway", migrations=migrations) as runtime,
            httpx.AsyncClient(timeout=settings.upstream_timeout_seconds, limits=limits) as client,
            guarded_client(settings.webhook_policy, timeout=settings.webhook_timeout_seconds) as webhook_client,
        ):
            upstreams = Upstreams(
                client,
                {
                    "collector": settings.collector_url,
                    "billing": settings.billing_url,
                    "control": settings.control_url,
                    "alarm": settings.alarm_url,
                    "insights": settings.insights_url,
                },
                ServiceTokens.from_settings(settings, SERVICE),
            )
            hub = live.LiveHub(settings.live_resume_seconds, settings.live_resume_frames)
            staff_hub = live.StaffHub(live.EstateDirectory(upstreams))
            hooks = Webhooks(
                runtime.engine,
                webhook_client,
                secret_key=settings.webhook_secret_key.get_secret_value(),
                instance=settings.instance_id,
                backoff=settings.webhook_backoff_seconds,
                lease=settings.webhook_lease_seconds,
                poll=settings.webhook_poll_seconds,
                timeout=settings.webhook_timeout_seconds,
                policy=settings.webhook_policy,
            )
            await hooks.seal_plaintext_secrets()
            balances = routes_me.balance_read_model(upstreams, settings.balance_cache_seconds)
            # The app's one state: the routers and the kit's operations routes (/readyz, dead letters) read it.
            app.state.container = Container(
                runtime=runtime,
                settings=settings,
                upstreams=upstreams,
                identity=Identity(runtime.engine, settings),
                idempotency=IdempotencyStore(runtime.engine),
                scopes=TenantScopes(upstreams, settings.scope_cache_seconds),
                verified_tokens=VerifiedTokens(),
                balances=balances,
                usage_today=ReadCache[tuple[str, str], bytes](settings.usage_today_cache_seconds),
                live=hub,
                webhooks=hooks,
                staff_live=staff_hub,
            )

            async def fan_out(message: Any, topic: str) -> asyncio.Future[None]:
                if isinstance(message, BalanceEvent):
                    balances.on_event(message)
                if not isinstance(message, CommandResult):
                    await hub.on_message(message, topic)
                await staff_hub.on_message(message, topic)
                return await hooks.on_message(message, topic)  # acknowledged once its deliveries are committed

            async def staff_only(message: CommandUpdate, topic: str) -> None:
                await staff_hub.on_message(message, topic)

            async def tenants_only(message: MonthlyReportReady, topic: str) -> None:
                await hub.on_message(message, topic)

            runtime.mqtt.subscribe(topics.ALL_METER_STATES, DeviceState, fan_out)
            runtime.mqtt.subscribe(topics.ALL_BALANCES, BalanceEvent, fan_out)
            runtime.mqtt.subscribe(topics.ALL_ALARMS, AlarmEvent, fan_out)
            runtime.mqtt.subscribe(topics.ALL_COMMAND_RESULTS, CommandResult, fan_out)
            runtime.mqtt.subscribe(topics.ALL_COMMAND_UPDATES, CommandUpdate, staff_only)  # the staff stream's
            runtime.mqtt.subscribe(topics.ALL_MONTHLY_REPORTS, MonthlyReportReady, tenants_only)  # the tenant stream's
            runtime.supervisor.add("webhooks", hooks.run)

            async def housekeeping() -> None:
                """Prune old webhook deliveries and expired used-ticket records (one replica at a time)."""
                while True:
                    try:
                        pruned = await hooks.prune(
                            settings.webhook_delivered_retention_days, settings.webhook_dead_retention_days
                        )
                        if pruned is not None:  # this replica holds the housekeeping turn
                            await live.forget_used_tickets(runtime.engine)
                    except Exception:  # the database is away: next round
                        log.exception("housekeeping failed; retrying in %s s", settings.housekeeping_seconds)
                    await asyncio.sleep(settings.housekeeping_seconds)

            runtime.supervisor.add("housekeeping", housekeeping)
            # Settings saved in the gateway before alarm owned them: pushed to alarm once, recorded as a data step
            # (gateway.data_steps); a start that finds the record does nothing more.
            runtime.supervisor.add(
                "settings-migration", lambda: routes_me.push_saved_settings_once(runtime.engine, upstreams)
            )
            async with runtime.running():
                yield

    app = FastAPI(
        title="Shuidian API",
        summary="水电预付费平台开放接口 · Public API of the Shuidian prepaid metering platform",
        description=DESCRIPTION,
        version=VERSION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_allow_header(app)
    serve_docs_offline(app)

    async def on_upstream(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UpstreamError)
        if exc.body and "status" in exc.body:
            return JSONResponse(exc.body, status_code=exc.status_code, media_type="application/problem+json")
        return problem(exc.status_code, exc.code.replace("_", " "), exc.detail, exc.code)

    app.add_exception_handler(UpstreamError, on_upstream)

    app.add_middleware(AuditWrites)
    app.add_middleware(RefuseNul)  # not even the audit row sees a NUL
    install_cors(app, settings.cors_origins)  # outermost: a browser can read every answer, refusals too

    @app.get(
        "/asyncapi.json",
        tags=["operations"],
        summary="AsyncAPI document of every MQTT topic",
        response_model=None,
        responses={200: {"model": AsyncApiDocument}},
    )
    async def asyncapi() -> dict[str, Any]:
        return document(VERSION)

    app.include_router(  # dead letters: administrators; their refusals are problem documents like every route's
        ops_router(lambda request: container_of(request).runtime, guard=[Depends(require(Action.USERS_MANAGE))]),
        responses=ERRORS,
    )
    app.include_router(routes_identity.router)
    app.include_router(routes_me.router)
    app.include_router(routes_live.router)
    app.include_router(routes_webhooks.router)
    app.include_router(routes_staff.build_router())
    app.include_router(routes_operations.router)
    app.include_router(routes_tariff_plans.router)
    for insights_router in routes_insights.routers:
        app.include_router(insights_router)
    for payments_router in routes_payments.routers(settings):
        app.include_router(payments_router)
    webui.install(app)  # the console and the portal, when web/dist was built
    return app
