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
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Scope
from shuidian_gateway.errors import Unauthorised
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
        container = getattr(getattr(self.config.app, "state", None), "container", None)
        hub = getattr(container, "live", None)
        if isinstance(hub, LiveHub):
            hub.close()
        await super().shutdown(sockets)


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
