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

Staff have a stream of their own, `/v1/live` (`StaffHub`): meter states, balance events, alarms and
command updates and results, of the estates the principal may see (every estate for an all-estates
role), and of the kinds its actions allow. Messages carry no estate, so an estate-scoped stream is
matched through the meters bound in its estates (billing's listing, refreshed every
`SCOPE_REFRESH_SECONDS`); an alarm's estate is asked of alarm once per alarm, and a balance event
that names no meter has its account's estate asked of billing. An object whose estate cannot be
told is not sent to estate-scoped streams: isolation before completeness (the console re-reads its
lists on every event and now and then anyway). No resumption: a reconnecting client re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import uvicorn
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway.adapters.readcache import ReadCache
from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Action, Scope
from shuidian_gateway.errors import Unauthorised
from shuidian_shared.contracts.insights import MonthlyReportReady
from shuidian_shared.messages import AlarmEvent, BalanceEvent, CommandResult, CommandUpdate, DeviceState

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
    if isinstance(message, MonthlyReportReady):
        return "monthly_report", {message.account_id}
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


# -- the staff stream --------------------------------------------------------------------------------
# Frame kind → the action a principal needs to receive it.
STAFF_KINDS: Final[dict[str, Action]] = {
    "meter_state": Action.DEVICES_READ,
    "balance": Action.ACCOUNTS_READ,
    "alarm": Action.ALARMS_READ,
    "command": Action.COMMANDS_READ,  # control's lifecycle: pending → sent → confirmed / failed …
    "command_result": Action.COMMANDS_READ,  # the collector's answer to one attempt
}
ESTATE_LOOKUP_SECONDS = 2.0  # an estate look-up holds up the broker's messages at most this long
ACCOUNT_ESTATE_SECONDS = 300.0  # an account's estate is cached this long (accounts seldom move)


@dataclass(frozen=True)
class StaffView:
    """What one staff stream carries: frames of `kinds`, about every estate (`estates` None) or about
    `estates` only, whose bound meters are `meters`."""

    kinds: frozenset[str]
    estates: frozenset[str] | None
    meters: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StaffFrame:
    seq: int
    kind: str
    data: str


@dataclass(eq=False)
class StaffClient:
    view: StaffView
    queue: asyncio.Queue[StaffFrame | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, frame: StaffFrame | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest: the console re-reads its lists anyway
        self.queue.put_nowait(frame)


def staff_audience(message: BaseModel) -> tuple[str, frozenset[str], tuple[str, str] | None]:
    """The frame kind of a message, the meters it is about, and — when no meter tells its estate —
    what to look the estate up by: ("alarm", alarm id) or ("account", account id)."""
    if isinstance(message, DeviceState):
        return "meter_state", frozenset({message.meter_id}), None
    if isinstance(message, CommandUpdate):
        return "command", frozenset({message.meter_id}), None
    if isinstance(message, CommandResult):
        return "command_result", frozenset({message.meter_id}), None
    if isinstance(message, BalanceEvent):
        meters = frozenset(m.meter_id for m in message.meters)
        return "balance", meters, None if meters else ("account", message.account_id)
    if isinstance(message, AlarmEvent):
        return "alarm", frozenset(), ("alarm", str(message.alarm_id))
    raise TypeError(f"not a staff live message: {type(message).__name__}")


class EstateDirectory:
    """Where things are, for estate-scoped staff streams: the meters bound in an estate (billing,
    cached `ttl` s), an alarm's estate (alarm; it never changes, so it is kept) and an account's
    (billing, cached). Failures are None: the frame is then not sent to estate-scoped streams."""

    def __init__(self, upstreams: Upstreams, ttl: float = SCOPE_REFRESH_SECONDS) -> None:
        self._upstreams = upstreams
        self._meters: ReadCache[str, frozenset[str]] = ReadCache(ttl)
        self._alarms: ReadCache[str, str] = ReadCache(365 * 86400.0)
        self._accounts: ReadCache[str, str] = ReadCache(ACCOUNT_ESTATE_SECONDS)

    async def meters_of(self, estates: Iterable[str]) -> frozenset[str]:
        """The meters bound now in any of `estates`; an estate billing does not know has none."""
        found: set[str] = set()
        for estate in sorted(estates):
            found |= await self._meters.get(estate, partial(self._fetch_meters, estate))
        return frozenset(found)

    async def _fetch_meters(self, estate: str) -> frozenset[str]:
        try:
            body = await self._upstreams.call("billing", "GET", f"/v1/estates/{estate}/meters")
        except UpstreamError as err:
            if err.status_code == 404:
                return frozenset()
            raise
        return frozenset(str(m) for m in (body or {}).get("meters", []))

    async def estate_of(self, kind: str, object_id: str) -> str | None:
        cache, service, path, name = (
            (self._alarms, "alarm", f"/v1/alarms/{object_id}", "estate")
            if kind == "alarm"
            else (self._accounts, "billing", f"/v1/accounts/{object_id}", "estate_id")
        )

        async def fetch() -> str:
            found = await self._upstreams.call(service, "GET", path)
            estate = found.get(name) if isinstance(found, dict) else None
            return "" if estate is None else str(estate)

        try:
            async with asyncio.timeout(ESTATE_LOOKUP_SECONDS):
                return await cache.get(object_id, fetch) or None
        except (UpstreamError, TimeoutError):
            log.warning("the estate of %s %s is unknown: not sent to estate-scoped streams", kind, object_id)
            return None


class StaffHub:
    """The staff streams of one process. All-estates streams get every frame of their kinds; an
    estate-scoped one gets the frames about meters bound in its estates (an index from meter to
    streams), and alarms and account-only balance events whose estate the directory names as one of
    its estates."""

    def __init__(self, directory: EstateDirectory) -> None:
        self.directory = directory
        self._everywhere: set[StaffClient] = set()
        self._scoped: set[StaffClient] = set()
        self._by_meter: dict[str, set[StaffClient]] = {}
        self._seq = 0
        self.epoch = secrets.token_hex(4)
        self.closed = False

    @property
    def clients(self) -> int:
        return len(self._everywhere) + len(self._scoped)

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def connect(self, view: StaffView) -> StaffClient:
        client = StaffClient(view)
        if self.closed:
            client.offer(None)
        self._add(client)
        return client

    def rescope(self, client: StaffClient, view: StaffView) -> None:
        """Follow the bindings: meters moved into or out of the stream's estates."""
        if client not in self._everywhere and client not in self._scoped:
            client.view = view
            return
        self._remove(client)
        client.view = view
        self._add(client)

    def disconnect(self, client: StaffClient) -> None:
        self._remove(client)

    async def on_message(self, message: BaseModel, topic: str) -> None:
        kind, meters, lookup = staff_audience(message)
        targets = {c for c in self._everywhere if kind in c.view.kinds}
        for meter in meters:
            targets.update(c for c in self._by_meter.get(meter, ()) if kind in c.view.kinds)
        if lookup is not None and any(kind in c.view.kinds for c in self._scoped):
            estate = await self.directory.estate_of(*lookup)
            if estate is not None:
                targets.update(
                    c for c in list(self._scoped) if kind in c.view.kinds and estate in (c.view.estates or ())
                )
        if not targets:
            return
        self._seq += 1
        frame = StaffFrame(self._seq, kind, message.model_dump_json())
        for client in targets:
            client.offer(frame)

    def close(self) -> None:
        self.closed = True
        for client in [*self._everywhere, *self._scoped]:
            client.offer(None)

    def _add(self, client: StaffClient) -> None:
        if client.view.estates is None:
            self._everywhere.add(client)
            return
        self._scoped.add(client)
        for meter in client.view.meters:
            self._by_meter.setdefault(meter, set()).add(client)

    def _remove(self, client: StaffClient) -> None:
        self._everywhere.discard(client)
        if client in self._scoped:
            self._scoped.discard(client)
            for meter in client.view.meters:
                watchers = self._by_meter.get(meter)
                if watchers is not None:
                    watchers.discard(client)
                    if not watchers:
                        del self._by_meter[meter]


class Server(uvicorn.Server):
    """uvicorn that ends the app's live streams (tenants' and staff's) before it waits for open
    connections to close: an event stream never ends by itself, so a plain uvicorn would wait for it
    until killed."""

    async def shutdown(self, sockets: Any = None) -> None:
        container = getattr(getattr(self.config.app, "state", None), "container", None)
        for name in ("live", "staff_live"):
            hub = getattr(container, name, None)
            if isinstance(hub, (LiveHub, StaffHub)):
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
