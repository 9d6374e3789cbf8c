"""The live routes: `/v1/me/live` as a WebSocket or server-sent events, and its single-use tickets; and
the staff stream `/v1/live` (server-sent events). See shuidian_gateway.adapters.live for the hubs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from shuidian_gateway.adapters.live import (
    RECONNECT_MILLISECONDS,
    SCOPE_REFRESH_SECONDS,
    STAFF_KINDS,
    TICKET_MAX_LENGTH,
    StaffHub,
    StaffView,
    redeem_ticket,
)
from shuidian_gateway.api.auth import Authenticated, Tenant, bearer, principal_from_token, utcnow
from shuidian_gateway.api.conventions import ERRORS
from shuidian_gateway.api.deps import container_of
from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Principal, Role
from shuidian_gateway.errors import Forbidden, GatewayError, Unauthorised

router = APIRouter()


# -- WebSocket ---------------------------------------------------------------------------------------
@router.websocket("/v1/me/live")
async def live(websocket: WebSocket) -> None:
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else None
    principal: Principal | None = None
    code, reason = 4401, "unauthorised"
    try:
        principal = await live_principal(websocket, token, websocket.query_params.get("ticket"))
    except Forbidden:
        code, reason = 4403, "tenant accounts only"
    except GatewayError:
        pass  # no, bad, expired or used credential: 4401
    # Accept first, so the client reads why it is refused from the close code (4401 / 4403).
    await websocket.accept()
    if principal is None or principal.tenant_id is None:
        await websocket.close(code=code, reason=reason)
        return
    scopes = container_of(websocket).scopes
    hub = container_of(websocket).live
    client, _ = hub.connect(await scopes.of(principal.tenant_id))
    receiver = asyncio.create_task(_drain(websocket))
    try:
        while True:
            getter = asyncio.ensure_future(client.queue.get())
            done, _ = await asyncio.wait(
                {getter, receiver}, timeout=SCOPE_REFRESH_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
            if receiver in done:
                break
            if getter in done:
                frame = getter.result()
                if frame is None:
                    await websocket.close(code=1001, reason="server shutting down")
                    break
                await websocket.send_text(f'{{"type":"{frame.kind}","data":{frame.data}}}')
            else:
                hub.rescope(client, await scopes.of(principal.tenant_id))  # leases change: follow them
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.disconnect(client)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await receiver


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, so a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


# -- Server-sent events ------------------------------------------------------------------------------
class LiveTicket(BaseModel):
    ticket: str = Field(
        description="credential for `/v1/me/live?ticket=` (event stream or WebSocket): one connection to the live stream"
    )
    expires_in: int = Field(description="seconds within which the ticket can be used, once")
    url: str = Field(
        description="the stream's path with the ticket, for `new EventSource(url)`; a browser's WebSocket opens "
        "the same path and query on `wss://`"
    )

    model_config = {
        "json_schema_extra": {
            "examples": [{"ticket": "eyJhbGciOi…", "expires_in": 30, "url": "/v1/me/live?ticket=eyJhbGciOi…"}]
        }
    }


class LiveReady(BaseModel):
    """The first event of every stream."""

    tenant_id: str
    resumed: bool = Field(
        description="true: the frames missed since Last-Event-ID follow; false: re-read balances and meters"
    )


async def live_principal(connection: Request | WebSocket, token: str | None, ticket: str | None) -> Principal:
    """The tenant a live connection (event stream or WebSocket) signs in as: by bearer token, else by
    live ticket, which this uses up. Unauthorised for no, bad, expired or used credentials and for an
    account no longer admitted; Forbidden for anyone but a tenant."""
    if token:
        principal = await principal_from_token(connection, token)
    elif ticket:
        if len(ticket) > TICKET_MAX_LENGTH:
            raise Unauthorised("invalid live ticket: too long")
        settings = container_of(connection).settings
        try:
            claims = security.decode_live_ticket(
                settings.jwt_secret.get_secret_value(), settings.jwt_issuer, ticket, now=utcnow()
            )
        except security.InvalidToken as err:
            raise Unauthorised(f"invalid live ticket: {err}") from err
        runtime = container_of(connection).runtime
        await redeem_ticket(runtime.engine, claims)
        principal = Principal("user", claims.user_id, Role.TENANT, frozenset(), claims.tenant_id)
    else:
        raise Unauthorised("sign in first: Authorization: Bearer <access token>, or ?ticket= / 请先登录")
    if principal.role is not Role.TENANT or principal.tenant_id is None:
        raise Forbidden("the /v1/me API is for tenant accounts / 仅限租户账号")
    return principal


async def live_tenant(
    request: Request,
    token: Annotated[str | None, Depends(bearer)],
    ticket: Annotated[
        str | None,
        Query(
            max_length=TICKET_MAX_LENGTH,
            description="a ticket from `POST /v1/me/live/tickets` (for EventSource and browser WebSockets)",
        ),
    ] = None,
) -> Principal:
    """A tenant, by bearer token or by live ticket (the event stream's dependency)."""
    principal = await live_principal(request, token, ticket)
    request.state.principal = principal
    return principal


@router.post(
    "/v1/me/live/tickets",
    tags=["tenant"],
    status_code=201,
    response_model=LiveTicket,
    responses=ERRORS,
    summary="实时推送票据 · A single-use ticket for the live stream (browsers' EventSource and WebSocket cannot "
    "send headers)",
)
async def live_ticket(principal: Tenant, request: Request) -> LiveTicket:
    settings = container_of(request).settings
    assert principal.tenant_id is not None
    ticket = security.encode_live_ticket(
        settings.jwt_secret.get_secret_value(),
        settings.jwt_issuer,
        user_id=principal.subject,
        tenant_id=principal.tenant_id,
        now=utcnow(),
        ttl=timedelta(seconds=settings.live_ticket_seconds),
    )
    return LiveTicket(ticket=ticket, expires_in=settings.live_ticket_seconds, url=f"/v1/me/live?ticket={ticket}")


@router.get(
    "/v1/me/live",
    tags=["tenant"],
    response_class=EventSourceResponse,
    responses=ERRORS,
    summary="实时推送（SSE）· Live meter states, balance events, alarms and monthly reports as server-sent events",
    description="`text/event-stream`. First `event: ready` (`data`: tenant id and whether the stream resumed), "
    "then `event: meter_state | balance | alarm | monthly_report` with `id: <epoch>-<n>` and the MQTT message as "
    "`data`, only for the tenant's own accounts and meters. Send `Last-Event-ID` (EventSource does on reconnect) to "
    "get the events missed since (or `?last_event_id=` with a new ticket), when this replica still holds every "
    "one of them; otherwise `ready` says "
    "`resumed: false` and the client re-reads its balances and meters. Idle streams get a `: heartbeat` "
    "comment. The same path as a WebSocket carries the same frames as JSON and signs in the same way "
    "(bearer header or `?ticket=`; 4401 / 4403 close codes for refusals).",
)
async def live_events(
    request: Request,
    principal: Annotated[Principal, Depends(live_tenant)],
    last_event_id: Annotated[str | None, Header(max_length=100, description="the last event id received")] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=100,
            description="the same as the `Last-Event-ID` header, for a new `EventSource` opened with a new ticket "
            "(it cannot set the header); the header wins",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    settings = container_of(request).settings
    scopes = container_of(request).scopes
    hub = container_of(request).live
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    scope = await scopes.of(tenant_id)
    # Back to back, no await between: a frame evicted in between would be a gap nobody is told about.
    after = hub.resume_point(last_event_id or last_event_id_query, scope)
    client, start = hub.connect(scope, after)
    try:
        yield ServerSentEvent(
            event="ready",
            id=hub.event_id(start),
            retry=RECONNECT_MILLISECONDS,
            data=LiveReady(tenant_id=tenant_id, resumed=after is not None),
        )
        heartbeat = settings.live_heartbeat_seconds
        beat_at = time.monotonic() + heartbeat
        refresh_at = time.monotonic() + SCOPE_REFRESH_SECONDS
        while True:
            try:
                async with asyncio.timeout(max(min(beat_at, refresh_at) - time.monotonic(), 0.0)):
                    frame = await client.queue.get()
            except TimeoutError:
                now = time.monotonic()
                if now >= refresh_at:
                    hub.rescope(client, await scopes.of(tenant_id))  # leases change: follow them
                    refresh_at = now + SCOPE_REFRESH_SECONDS
                if now >= beat_at:
                    yield ServerSentEvent(comment="heartbeat")
                    beat_at = now + heartbeat
                continue
            if frame is None:
                yield ServerSentEvent(comment="server shutting down; reconnect")
                return
            yield ServerSentEvent(event=frame.kind, id=hub.event_id(frame.seq), raw_data=frame.data)
            beat_at = time.monotonic() + heartbeat
    finally:
        hub.disconnect(client)


# -- the staff stream --------------------------------------------------------------------------------
StaffKind = Literal["meter_state", "balance", "alarm", "command", "command_result"]
assert set(get_args(StaffKind)) == set(STAFF_KINDS)
IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"


class StaffLiveReady(BaseModel):
    """The first event of every staff stream: what it carries. Re-read lists now (no resumption)."""

    kinds: list[StaffKind] = Field(description="the frame kinds this stream carries")
    estates: list[str] | None = Field(description="the estates it covers; null: every estate")


async def staff_view(
    request: Request,
    principal: Authenticated,
    kind: Annotated[
        list[StaffKind] | None,
        Query(
            description="only these kinds (repeat the parameter); default: every kind the principal's actions "
            "allow. Asking for a kind the actions do not allow is a 403"
        ),
    ] = None,
    estate: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=IDENT,
            description="only this estate (one of the principal's); default: every estate the principal sees",
        ),
    ] = None,
) -> StaffView:
    """What a staff member's stream carries; refused before the stream starts."""
    if principal.role is Role.TENANT:
        raise Forbidden("tenant accounts use /v1/me/live / 租户请使用 /v1/me/live")
    allowed = {k for k, action in STAFF_KINDS.items() if principal.may(action)}
    wanted = set(kind) if kind else allowed
    if not wanted or not wanted <= allowed:
        needs = ", ".join(sorted({STAFF_KINDS[k].value for k in (wanted - allowed) or STAFF_KINDS}))
        raise Forbidden(f"your role or key does not allow {needs} / 无权订阅这些实时消息")
    if estate is not None and not principal.may_see_estate(estate):
        raise Forbidden("estate is outside your estates / 超出您管理的小区")
    estates = frozenset({estate}) if estate is not None else None if principal.all_estates else principal.estates
    return await _with_meters(container_of(request).staff_live, StaffView(frozenset(wanted), estates))


async def _with_meters(hub: StaffHub, view: StaffView) -> StaffView:
    if view.estates is None:
        return view
    return StaffView(view.kinds, view.estates, await hub.directory.meters_of(view.estates))


@router.get(
    "/v1/live",
    tags=["staff"],
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {"model": StaffLiveReady, "description": "`text/event-stream` (the `ready` event's data)"},
    },
    summary="员工实时推送（SSE）· Live alarms, command updates, meter states and balance events for staff",
    description="`text/event-stream` for staff and integrators: first `event: ready` (`data`: the kinds and estates "
    "the stream carries), then `event: meter_state | balance | alarm | command | command_result` with `id:` and the "
    "MQTT message (DeviceState, BalanceEvent, AlarmEvent, CommandUpdate, CommandResult) as `data`. Only objects of "
    "the estates the principal sees (every estate for an all-estates role; `estate=` narrows it to one) and only "
    "the kinds its actions allow: meter_state needs devices:read, balance accounts:read, alarm alarms:read, command "
    "and command_result commands:read. An object whose estate the gateway cannot tell is left out of an "
    "estate-scoped stream. Sign in with `Authorization: Bearer` (the console reads the stream with fetch). There "
    "is no resumption: on `ready` (every connect) re-read the lists the stream keeps current. Idle streams get a "
    "`: heartbeat` comment; a stream ends after the access token's lifetime (and at shutdown): reconnect with a "
    "fresh token.",
    openapi_extra={"x-required-actions": sorted({action.value for action in STAFF_KINDS.values()})},
)
async def staff_live_events(
    request: Request, view: Annotated[StaffView, Depends(staff_view)]
) -> AsyncIterator[ServerSentEvent]:
    settings = container_of(request).settings
    hub = container_of(request).staff_live
    client = hub.connect(view)
    try:
        yield ServerSentEvent(
            event="ready",
            id=hub.event_id(0),
            retry=RECONNECT_MILLISECONDS,
            data=StaffLiveReady(
                kinds=sorted(view.kinds),
                estates=None if view.estates is None else sorted(view.estates),
            ),
        )
        now = time.monotonic()
        heartbeat = settings.live_heartbeat_seconds
        beat_at, refresh_at = now + heartbeat, now + SCOPE_REFRESH_SECONDS
        # The principal was checked once: end with the token's lifetime, so a disabled user or revoked key
        # loses the stream within it (the client reconnects with a fresh token).
        end_at = now + settings.access_token_seconds
        while True:
            try:
                async with asyncio.timeout(max(min(beat_at, refresh_at, end_at) - time.monotonic(), 0.0)):
                    frame = await client.queue.get()
            except TimeoutError:
                now = time.monotonic()
                if now >= end_at:
                    yield ServerSentEvent(comment="reconnect with a fresh token")
                    return
                if now >= refresh_at:
                    hub.rescope(client, await _with_meters(hub, client.view))  # bindings change: follow them
                    refresh_at = now + SCOPE_REFRESH_SECONDS
                if now >= beat_at:
                    yield ServerSentEvent(comment="heartbeat")
                    beat_at = now + heartbeat
                continue
            if frame is None:
                yield ServerSentEvent(comment="server shutting down; reconnect")
                return
            yield ServerSentEvent(event=frame.kind, id=hub.event_id(frame.seq), raw_data=frame.data)
            beat_at = time.monotonic() + heartbeat
    finally:
        hub.disconnect(client)
