"""Live push: `/v1/me/live` streams a tenant's meter states, balance events and alarms from MQTT,
filtered to the tenant's scope, over a WebSocket or as server-sent events (`GET`, `text/event-stream`).

One hub fans every message out to the clients of this process, whichever transport they use, through
an index from meter and account ids to the clients that see them. Each message gets a sequence number
`<epoch>-<n>` (the epoch is this process's, so ids are meaningful to the replica that issued them).
For `Last-Event-ID` resumption the hub keeps the frames about ids some client watches (connected, or
gone less than `GATEWAY_LIVE_RESUME_SECONDS` ago), for that long and at most
`GATEWAY_LIVE_RESUME_FRAMES` of them; a resuming stream gets every frame it missed or `resumed:
false`, never a part. A slow client loses its oldest frames rather than holding the others up.

Both transports sign in the same way (`live_principal`): `Authorization: Bearer <access token>`, or
`?ticket=` from `POST /v1/me/live/tickets` where a browser cannot set headers (`EventSource`, the
browser's `WebSocket`). An access token is never taken from the query string: URLs end up in proxy
logs and browser history, and a ticket found there is worthless once used. A ticket opens one
connection (its id is recorded in `gateway.live_tickets_used` on first use, for every replica), within
`GATEWAY_LIVE_TICKET_SECONDS`, for an account that is still an active, unlocked tenant; a reconnect
needs a new ticket.

WebSocket: each frame is JSON: `{"type": "meter_state" | "balance" | "alarm", "data": {…}}`. A refused
credential closes the socket with 4401, a signed-in non-tenant with 4403.

Server-sent events: the stream starts with `event: ready` and then carries `event: meter_state |
balance | alarm` with `id:` and the message as `data:`; idle streams get a comment every
`GATEWAY_LIVE_HEARTBEAT_SECONDS`; on shutdown the stream ends cleanly and clients reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway import security
from shuidian_gateway.auth import Scope, Tenant, TenantScopes, bearer, principal_from_token, utcnow
from shuidian_gateway.conventions import ERRORS
from shuidian_gateway.errors import Forbidden, GatewayError, Unauthorised
from shuidian_gateway.policy import Principal, Role
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.service import Runtime
from shuidian_shared.messages import AlarmEvent, BalanceEvent, DeviceState

log = logging.getLogger(__name__)
QUEUE_SIZE = 256
SCOPE_REFRESH_SECONDS = 30.0
# Last-Event-ID resumption: frames about watched ids are kept this long, and at most this many
# (≈ 1 KB each with their payload: 50,000 frames ≈ 50 MB); settings override both.
RESUME_SECONDS = 120.0
RESUME_FRAMES = 50_000
RECONNECT_MILLISECONDS = 3000
TICKET_MAX_LENGTH = 2000  # a ticket is a JWT of a few hundred characters


@dataclass(frozen=True)
class Frame:
    """One message as the live stream sends it: its sequence number, type, payload (JSON text),
    the ids it is about, and when the hub received it (monotonic seconds)."""

    seq: int
    kind: str
    data: str
    ids: frozenset[str]
    at: float


def scope_ids(scope: Scope) -> frozenset[str]:
    """The ids whose frames a tenant receives: their meters and accounts (alarms name either)."""
    return scope.meters | scope.accounts


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
        return bool(frame.ids & scope_ids(self.scope))


@dataclass(eq=False)
class Watch:
    """Who watches one id (meter or account): the connected clients, and how many disconnected ones
    may still resume. Every frame about the id with a sequence number above `since` was kept; the
    kept ones up to `lost` have been evicted since."""

    since: int
    clients: set[LiveClient] = field(default_factory=set)
    lingering: int = 0
    lost: int = 0


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
    """The fan-out of one process. Frames are kept for resumption only when they are about an id
    some client watches — connected, or disconnected less than `resume_seconds` ago — and then for
    at most `resume_seconds` and `max_frames` frames (memory), so the buffer follows the tenants
    that are online, not the size of the city. Resumption is refused (`resumed: false`), never
    partial, when any frame the client could have missed is not held."""

    def __init__(
        self,
        resume_seconds: float = RESUME_SECONDS,
        max_frames: int = RESUME_FRAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients: set[LiveClient] = set()
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._recent: deque[Frame] = deque()
        self._watch: dict[str, Watch] = {}
        self._lingering: deque[tuple[float, frozenset[str]]] = deque()
        self._resume_seconds = resume_seconds
        self._max_frames = max_frames
        self._clock = clock
        self.closed = False

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def held(self) -> int:
        """Frames held for resumption."""
        return len(self._recent)

    @property
    def watched(self) -> int:
        """Ids whose frames are held."""
        return len(self._watch)

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def resume_point(self, last_event_id: str | None, scope: Scope) -> int | None:
        """The sequence number to replay after, if this hub holds every frame about `scope` since
        `last_event_id`; None when it does not (another process's id, or anything missing)."""
        if not last_event_id:
            return None
        epoch, _, number = last_event_id.strip().partition("-")
        if epoch != self.epoch or not number.isdigit():
            return None  # another replica's or another run's id
        seq = int(number)
        if seq > self._seq:
            return None  # from the future
        self._tidy(self._clock())
        for object_id in scope_ids(scope):
            watch = self._watch.get(object_id)
            if watch is None or watch.since > seq or watch.lost > seq:
                return None  # frames about it since then were not kept, or were dropped
        return seq

    def connect(self, scope: Scope, after: int | None = None) -> tuple[LiveClient, int]:
        """Register a client (first the frames after `after` it may see, when resuming); returns the
        client and the sequence number it starts from. Call `resume_point` and this back to back,
        with no await between: a frame evicted in between would be a silent gap."""
        client = LiveClient(scope)
        if after is not None:
            for frame in self._recent:
                if frame.seq > after and client.sees(frame):
                    client.offer(frame)
        if self.closed:
            client.offer(None)
        self._clients.add(client)
        self._watch_ids(client, scope_ids(scope))
        return client, self._seq if after is None else after

    def rescope(self, client: LiveClient, scope: Scope) -> None:
        """Follow a tenant's leases: ids they gained are watched from now on, lost ones no longer."""
        old, new = scope_ids(client.scope), scope_ids(scope)
        client.scope = scope
        if client not in self._clients:
            return
        for object_id in old - new:
            watch = self._watch.get(object_id)
            if watch is not None:
                watch.clients.discard(client)
                self._forget_if_unwatched(object_id, watch)
        self._watch_ids(client, new - old)

    def disconnect(self, client: LiveClient) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        ids = scope_ids(client.scope)
        for object_id in ids:
            watch = self._watch.get(object_id)
            if watch is not None:
                watch.clients.discard(client)
                watch.lingering += 1  # it may come back with Last-Event-ID
        self._lingering.append((self._clock() + self._resume_seconds, ids))
        self._tidy(self._clock())

    async def on_message(self, message: BaseModel, topic: str) -> None:
        kind, ids = audience(message)
        self._seq += 1
        now = self._clock()
        self._tidy(now)
        watches = [watch for object_id in ids if (watch := self._watch.get(object_id)) is not None]
        if not watches:
            return  # nobody online or able to resume could receive it: not kept, not sent
        frame = Frame(self._seq, kind, message.model_dump_json(), frozenset(ids), now)
        self._recent.append(frame)
        self._tidy(now)
        targets = watches[0].clients if len(watches) == 1 else set().union(*(w.clients for w in watches))
        for client in list(targets):
            client.offer(frame)

    def close(self) -> None:
        """End every stream (at shutdown, before the server waits for open connections)."""
        self.closed = True
        for client in list(self._clients):
            client.offer(None)

    def _watch_ids(self, client: LiveClient, ids: frozenset[str]) -> None:
        for object_id in ids:
            watch = self._watch.get(object_id)
            if watch is None:
                watch = self._watch[object_id] = Watch(since=self._seq)
            watch.clients.add(client)

    def _forget_if_unwatched(self, object_id: str, watch: Watch) -> None:
        if not watch.clients and watch.lingering <= 0:
            del self._watch[object_id]

    def _tidy(self, now: float) -> None:
        """Evict frames past the time or memory bound (noting, per id, what was lost) and forget the
        ids of clients gone for longer than they could resume."""
        horizon = now - self._resume_seconds
        while self._recent and (len(self._recent) > self._max_frames or self._recent[0].at < horizon):
            frame = self._recent.popleft()
            for object_id in frame.ids:
                watch = self._watch.get(object_id)
                if watch is not None and watch.lost < frame.seq:
                    watch.lost = frame.seq
        while self._lingering and self._lingering[0][0] <= now:
            _, ids = self._lingering.popleft()
            for object_id in ids:
                watch = self._watch.get(object_id)
                if watch is not None:
                    watch.lingering -= 1
                    self._forget_if_unwatched(object_id, watch)


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


_REDEEM = text(
    "WITH used AS (INSERT INTO gateway.live_tickets_used (ticket_id, expires_at) VALUES (:jti, :exp) "
    "ON CONFLICT (ticket_id) DO NOTHING RETURNING ticket_id) "
    "SELECT EXISTS (SELECT FROM used) AS first_use, "
    "coalesce(u.active AND (u.locked_until IS NULL OR u.locked_until <= now()) "
    "AND u.role = 'tenant' AND u.tenant_id = :tid, false) AS admitted "
    "FROM (VALUES (1)) AS one (n) LEFT JOIN gateway.users u ON u.user_id = :uid"
)


async def redeem_ticket(engine: AsyncEngine, claims: security.LiveTicketClaims) -> None:
    """Use a live ticket up: one statement records its id (the first use wins, on every replica) and
    checks that its user is still an active, unlocked tenant of that tenant id. Unauthorised otherwise."""
    try:
        user_id = uuid.UUID(claims.user_id)
    except ValueError as err:
        raise Unauthorised("invalid live ticket: unknown user") from err
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                _REDEEM,
                {"jti": claims.ticket_id, "exp": claims.expires_at, "uid": user_id, "tid": claims.tenant_id},
            )
        ).one()
    if not row.first_use:
        raise Unauthorised("the live ticket was used already; fetch a new one / 票据已使用，请重新获取")
    if not row.admitted:
        raise Unauthorised("the account is disabled or locked / 账号已停用或锁定")


async def forget_used_tickets(engine: AsyncEngine, batch: int = 5000) -> int:
    """Delete the records of used tickets that have expired anyway (housekeeping); how many."""
    deleted = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(
                text(
                    "DELETE FROM gateway.live_tickets_used WHERE ticket_id IN (SELECT ticket_id "
                    "FROM gateway.live_tickets_used WHERE expires_at < now() LIMIT :n)"
                ),
                {"n": batch},
            )
        count = result.rowcount or 0
        deleted += count
        if count < batch:
            return deleted


async def live_principal(connection: Request | WebSocket, token: str | None, ticket: str | None) -> Principal:
    """The tenant a live connection (event stream or WebSocket) signs in as: by bearer token, else by
    live ticket, which this uses up. Unauthorised for no, bad, expired or used credentials and for an
    account no longer admitted; Forbidden for anyone but a tenant."""
    if token:
        principal = await principal_from_token(connection, token)
    elif ticket:
        if len(ticket) > TICKET_MAX_LENGTH:
            raise Unauthorised("invalid live ticket: too long")
        settings: GatewaySettings = connection.app.state.settings
        try:
            claims = security.decode_live_ticket(
                settings.jwt_secret.get_secret_value(), settings.jwt_issuer, ticket, now=utcnow()
            )
        except security.InvalidToken as err:
            raise Unauthorised(f"invalid live ticket: {err}") from err
        runtime: Runtime = connection.app.state.runtime
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
    settings: GatewaySettings = request.app.state.settings
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
    summary="实时推送（SSE）· Live meter states, balance events and alarms as server-sent events",
    description="`text/event-stream`. First `event: ready` (`data`: tenant id and whether the stream resumed), "
    "then `event: meter_state | balance | alarm` with `id: <epoch>-<n>` and the MQTT message as `data`, "
    "only for the tenant's own accounts and meters. Send `Last-Event-ID` (EventSource does on reconnect) to "
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
    settings: GatewaySettings = request.app.state.settings
    scopes: TenantScopes = request.app.state.scopes
    hub: LiveHub = request.app.state.live
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
