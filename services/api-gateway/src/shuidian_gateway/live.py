"""Live push: `/v1/me/live` streams a tenant's meter states, balance events and alarms from MQTT,
filtered to the tenant's scope, over a WebSocket or as server-sent events (`GET`, `text/event-stream`).

One hub fans every message out to the clients of this process, whichever transport they use. Each
message gets a sequence number `<epoch>-<n>` (the epoch is this process's, so ids are meaningful to
the replica that issued them); the hub keeps the last `RECENT` frames so an event stream that
reconnects with `Last-Event-ID` gets what it missed. A slow client loses its oldest frames rather
than holding the others up.

WebSocket: `Authorization: Bearer <access token>` or, where a browser cannot set headers,
`?access_token=`. Each frame is JSON: `{"type": "meter_state" | "balance" | "alarm", "data": {…}}`.

Server-sent events: `Authorization: Bearer <access token>`, or `?ticket=` from
`POST /v1/me/live/tickets` for `EventSource`, which cannot send headers (a ticket is good for
`GATEWAY_LIVE_TICKET_SECONDS` and for the live stream only, so a URL that ends up in a log is worth
little). The stream starts with `event: ready` and then carries `event: meter_state | balance |
alarm` with `id:` and the message as `data:`; idle streams get a comment every
`GATEWAY_LIVE_HEARTBEAT_SECONDS`; on shutdown the stream ends cleanly and `EventSource` reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from shuidian_gateway import security
from shuidian_gateway.auth import Scope, Tenant, TenantScopes, bearer, principal_from_token, utcnow
from shuidian_gateway.conventions import ERRORS
from shuidian_gateway.errors import Forbidden, GatewayError, Unauthorised
from shuidian_gateway.policy import Principal, Role
from shuidian_gateway.settings import GatewaySettings
from shuidian_shared.messages import AlarmEvent, BalanceEvent, DeviceState

log = logging.getLogger(__name__)
QUEUE_SIZE = 256
SCOPE_REFRESH_SECONDS = 30.0
# Frames kept for Last-Event-ID resumption (all tenants together; a few minutes of a busy estate).
RECENT = 4096
RECONNECT_MILLISECONDS = 3000


@dataclass(frozen=True)
class Frame:
    """One message as the live stream sends it: its sequence number, type, payload and audience."""

    seq: int
    kind: str
    data: dict[str, Any]
    ids: frozenset[str]


@dataclass(eq=False)
class LiveClient:
    scope: Scope
    # None is the hub closing: the stream ends.
    queue: asyncio.Queue[Frame | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, frame: Frame | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest: live values are superseded anyway
        self.queue.put_nowait(frame)

    def sees(self, frame: Frame) -> bool:
        return bool(frame.ids & (self.scope.meters | self.scope.accounts))


def audience(message: BaseModel) -> tuple[str, set[str]]:
    """The frame type of a message and the ids (meters, accounts, alarm sources) it is about."""
    if isinstance(message, DeviceState):
        return "meter_state", {message.meter_id}
    if isinstance(message, BalanceEvent):
        return "balance", {message.account_id}
    if isinstance(message, AlarmEvent):
        return "alarm", {message.source_id}
    raise TypeError(f"not a live message: {type(message).__name__}")


class LiveHub:
    def __init__(self, recent: int = RECENT) -> None:
        self._clients: set[LiveClient] = set()
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._recent: deque[Frame] = deque(maxlen=recent)
        self.closed = False

    @property
    def clients(self) -> int:
        return len(self._clients)

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def resume_point(self, last_event_id: str | None) -> int | None:
        """The sequence number to replay after, if this hub still holds every frame since it."""
        if not last_event_id:
            return None
        epoch, _, number = last_event_id.strip().partition("-")
        if epoch != self.epoch or not number.isdigit():
            return None  # another replica's or another run's id
        seq = int(number)
        oldest = self._recent[0].seq if self._recent else self._seq + 1
        if seq > self._seq or seq < oldest - 1:
            return None  # from the future, or frames since then were already dropped
        return seq

    def connect(self, scope: Scope, after: int | None = None) -> tuple[LiveClient, int]:
        """Register a client (first the frames after `after` it may see, when resuming); returns the
        client and the sequence number it starts from. No await here: nothing slips between."""
        client = LiveClient(scope)
        if after is not None:
            for frame in self._recent:
                if frame.seq > after and client.sees(frame):
                    client.offer(frame)
        if self.closed:
            client.offer(None)
        self._clients.add(client)
        return client, self._seq if after is None else after

    def disconnect(self, client: LiveClient) -> None:
        self._clients.discard(client)

    async def on_message(self, message: BaseModel, topic: str) -> None:
        kind, ids = audience(message)
        self._seq += 1
        frame = Frame(self._seq, kind, message.model_dump(mode="json"), frozenset(ids))
        self._recent.append(frame)
        for client in list(self._clients):
            if client.sees(frame):
                client.offer(frame)

    def close(self) -> None:
        """End every stream (at shutdown, before the server waits for open connections)."""
        self.closed = True
        for client in list(self._clients):
            client.offer(None)


class Server(uvicorn.Server):
    """uvicorn that ends the app's live streams before it waits for open connections to close: an
    event stream never ends by itself, so a plain uvicorn would wait for it until killed."""

    async def shutdown(self, sockets: Any = None) -> None:
        hub = getattr(getattr(self.config.app, "state", None), "live", None)
        if isinstance(hub, LiveHub):
            hub.close()
        await super().shutdown(sockets)


router = APIRouter()


# -- WebSocket ---------------------------------------------------------------------------------------
@router.websocket("/v1/me/live")
async def live(websocket: WebSocket) -> None:
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else websocket.query_params.get("access_token", "")
    try:
        principal = await principal_from_token(websocket, token) if token else None
    except GatewayError:
        principal = None
    # Accept first, so the client reads why it is refused from the close code (4401 / 4403).
    await websocket.accept()
    if principal is None:
        await websocket.close(code=4401, reason="unauthorised")
        return
    if principal.role is not Role.TENANT or principal.tenant_id is None:
        await websocket.close(code=4403, reason="tenant accounts only")
        return
    scopes: TenantScopes = websocket.app.state.scopes
    hub: LiveHub = websocket.app.state.live
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
                await websocket.send_json({"type": frame.kind, "data": frame.data})
            else:
                client.scope = await scopes.of(principal.tenant_id)  # leases change: follow them
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
    ticket: str = Field(description="credential for `GET /v1/me/live?ticket=`; the live stream only")
    expires_in: int = Field(description="seconds the ticket can be used to connect")
    url: str = Field(description="the stream's path with the ticket, for `new EventSource(url)`")

    model_config = {
        "json_schema_extra": {
            "examples": [{"ticket": "eyJhbGciOi…", "expires_in": 60, "url": "/v1/me/live?ticket=eyJhbGciOi…"}]
        }
    }


class LiveReady(BaseModel):
    """The first event of every stream."""

    tenant_id: str
    resumed: bool = Field(
        description="true: the frames missed since Last-Event-ID follow; false: re-read balances and meters"
    )


async def live_tenant(
    request: Request,
    token: Annotated[str | None, Depends(bearer)],
    ticket: Annotated[
        str | None, Query(max_length=2000, description="a ticket from `POST /v1/me/live/tickets` (for EventSource)")
    ] = None,
) -> Principal:
    """A tenant, by bearer token or by live ticket."""
    if token:
        principal = await principal_from_token(request, token)
    elif ticket:
        settings: GatewaySettings = request.app.state.settings
        try:
            user_id, tenant_id = security.decode_live_ticket(
                settings.jwt_secret.get_secret_value(), settings.jwt_issuer, ticket, now=utcnow()
            )
        except security.InvalidToken as err:
            raise Unauthorised(f"invalid live ticket: {err}") from err
        principal = Principal("user", user_id, Role.TENANT, frozenset(), tenant_id)
    else:
        raise Unauthorised("sign in first: Authorization: Bearer <access token>, or ?ticket= / 请先登录")
    if principal.role is not Role.TENANT or principal.tenant_id is None:
        raise Forbidden("the /v1/me API is for tenant accounts / 仅限租户账号")
    request.state.principal = principal
    return principal


@router.post(
    "/v1/me/live/tickets",
    tags=["tenant"],
    status_code=201,
    response_model=LiveTicket,
    responses=ERRORS,
    summary="实时推送票据 · A short-lived ticket for the event stream (EventSource cannot send headers)",
)
async def live_ticket(principal: Tenant, request: Request) -> LiveTicket:
    settings: GatewaySettings = request.app.state.settings
    assert principal.tenant_id is not None
    ticket = security.encode_live_ticket(
        settings.jwt_secret.get_secret_value(),
        settings.jwt_issuer,
        user_id=principal.name,
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
    summary="实时推送（SSE）· Live meter states, balance events and alarms as server-sent events",
    description="`text/event-stream`. First `event: ready` (`data`: tenant id and whether the stream resumed), "
    "then `event: meter_state | balance | alarm` with `id: <epoch>-<n>` and the MQTT message as `data`, "
    "only for the tenant's own accounts and meters. Send `Last-Event-ID` (EventSource does on reconnect) to "
    "get the events missed since, when this replica still holds them; otherwise `ready` says "
    "`resumed: false` and the client re-reads its balances and meters. Idle streams get a `: heartbeat` "
    "comment. The same path as a WebSocket carries the same frames as JSON.",
)
async def live_events(
    request: Request,
    principal: Annotated[Principal, Depends(live_tenant)],
    last_event_id: Annotated[str | None, Header(max_length=100, description="the last event id received")] = None,
) -> AsyncIterator[ServerSentEvent]:
    settings: GatewaySettings = request.app.state.settings
    scopes: TenantScopes = request.app.state.scopes
    hub: LiveHub = request.app.state.live
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    after = hub.resume_point(last_event_id)
    client, start = hub.connect(await scopes.of(tenant_id), after)
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
                    client.scope = await scopes.of(tenant_id)  # leases change: follow them
                    refresh_at = now + SCOPE_REFRESH_SECONDS
                if now >= beat_at:
                    yield ServerSentEvent(comment="heartbeat")
                    beat_at = now + heartbeat
                continue
            if frame is None:
                yield ServerSentEvent(comment="server shutting down; reconnect")
                return
            yield ServerSentEvent(event=frame.kind, id=hub.event_id(frame.seq), data=frame.data)
            beat_at = time.monotonic() + heartbeat
    finally:
        hub.disconnect(client)
