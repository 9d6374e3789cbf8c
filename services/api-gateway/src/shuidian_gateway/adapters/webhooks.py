"""Webhook subscriptions for integrators, and their signed deliveries.

Platform events from MQTT (balance events, alarms, command results, meter states) are POSTed as
JSON to every active subscription that asked for that event, signed with the subscription's
secret: `Shuidian-Signature: t=<unix>,v1=<HMAC-SHA256(secret, "<unix>.<body>") hex>` (see
`security.verify_webhook`). `Shuidian-Message-Id` lets receivers drop duplicates.

Once across replicas: every replica receives every event and inserts one row per (subscription,
event) into `gateway.webhook_deliveries`; the unique key keeps the first. Due rows are claimed with
FOR UPDATE SKIP LOCKED by one replica, which owns the delivery for a lease
(`GATEWAY_WEBHOOK_LEASE_SECONDS`); a replica that dies mid-delivery leaves the row to be claimed
again when the lease runs out, so nothing is lost (that one delivery may then arrive twice).
One attempt, answer included, is bounded as a whole by `GATEWAY_WEBHOOK_TIMEOUT_SECONDS` (shorter
than the lease), so a slow receiver cannot make a live replica's claim run out. A failed attempt is
retried with back-off, up to `ATTEMPTS` times; then the row stays as a dead letter (`state = 'dead'`,
with its body, status and error). Housekeeping (`prune`, one replica at a time) deletes delivered
rows and dead letters past their retention.

Webhook URLs must reach a public address (`shuidian_kit.urlguard`): a subscription to a loopback,
private, link-local or metadata address is a 422 unless the operator allow-listed it
(`GATEWAY_WEBHOOK_ALLOWED_NETWORKS`), and every delivery connects only to an address checked when
it resolved the name, without following redirects.

Signing secrets are sealed at rest (AES-256-GCM, key from `GATEWAY_WEBHOOK_SECRET_KEY`), shown once
at creation and never returned again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway.domain import security
from shuidian_gateway.errors import ObjectNotFound, PreconditionFailed, UrlNotAllowed
from shuidian_kit import urlguard
from shuidian_shared.messages import AlarmEvent, BalanceEvent, CommandResult, DeviceState

log = logging.getLogger(__name__)
DELIVERED = Counter("gateway_webhook_deliveries_total", "Webhook delivery attempts", ["outcome"])
PRUNED = Counter("gateway_webhook_deliveries_pruned_total", "Finished webhook deliveries deleted", ["state"])
Event = Literal["balance", "alarm", "command.result", "meter.state"]
EVENT_OF: dict[type[Any], str] = {
    BalanceEvent: "balance",
    AlarmEvent: "alarm",
    CommandResult: "command.result",
    DeviceState: "meter.state",
}
ATTEMPTS = 4
QUEUE_SIZE = 10_000
# Events written to the deliveries table per statement.
INSERT_BATCH = 500
CACHE_SECONDS = 5.0
# Finished deliveries deleted per statement by the housekeeping (short transactions, short locks).
PRUNE_BATCH = 5000
# Housekeeping runs on one replica at a time: a session advisory lock (released if that replica dies).
HOUSEKEEPING_LOCK = "SELECT pg_try_advisory_lock(hashtext('gateway.housekeeping'))"
HOUSEKEEPING_UNLOCK = "SELECT pg_advisory_unlock(hashtext('gateway.housekeeping'))"
# Deliveries in flight at once: each may hold a resolver thread while a receiver's name is looked up.
CONCURRENCY = 4
COLUMNS = "webhook_id, owner, url, events, active, version, created_at"


@dataclass(frozen=True)
class Delivery:
    """One claimed (subscription, event) delivery; `attempt` is also the claim's fencing token."""

    delivery_id: int
    webhook_id: uuid.UUID
    message_id: uuid.UUID
    event: str
    body: bytes
    attempt: int
    url: str
    sealed: bytes | None
    plaintext: str | None  # a secret not sealed yet (written by a replica of an older version)
    active: bool


_Queued = tuple[str, uuid.UUID, bytes, "asyncio.Future[None]"]  # event, message id, body, committed


class Webhooks:
    """Subscriptions in the gateway schema; deliveries queued in PostgreSQL from MQTT and sent by
    whichever replica claims them."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: httpx.AsyncClient,
        *,
        secret_key: str,
        instance: str,
        backoff: float = 1.0,
        lease: float = 30.0,
        poll: float = 1.0,
        timeout: float = 5.0,
        policy: urlguard.UrlPolicy | None = None,
    ) -> None:
        self._engine = engine
        self._policy = policy or urlguard.UrlPolicy()
        self._client = client
        self._key = security.sealing_key(secret_key)
        self._instance = instance
        self._backoff = backoff
        self._lease = lease
        self._poll = poll
        self._timeout = timeout
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(QUEUE_SIZE)
        self._cache: tuple[float, list[Any]] = (0.0, [])
        self._wake = asyncio.Event()

    async def on_message(self, message: Any, topic: str) -> asyncio.Future[None]:
        """MQTT handler: queue the event for the deliveries table. The future completes once its
        deliveries are committed (the message is acknowledged then); a full queue makes the handler
        wait, never drops the event."""
        event = EVENT_OF[type(message)]
        body = json.dumps(
            {
                "event": event,
                "topic": topic,
                "message_id": str(message.message_id),
                "data": message.model_dump(mode="json"),
            }
        ).encode()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, message.message_id, body, done))
        return done

    async def _subscribers(self, event: str) -> list[Any]:
        expires, rows = self._cache
        if expires < time.monotonic():
            async with self._engine.connect() as conn:
                rows = list(await conn.execute(text("SELECT webhook_id, events FROM gateway.webhooks WHERE active")))
            self._cache = (time.monotonic() + CACHE_SECONDS, rows)
        return [r for r in rows if event in r.events]

    def invalidate(self) -> None:
        self._cache = (0.0, [])

    async def run(self) -> None:
        """Supervised loop: write queued events as deliveries, and send the due ones."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._enqueue_loop())
            group.create_task(self._dispatch_loop())

    # -- queueing ----------------------------------------------------------------------------------
    async def _enqueue_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < INSERT_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    await self._enqueue(batch)
                    break
                except Exception:  # the database is down: keep the batch and try again
                    log.exception("could not queue %d webhook event(s); retrying", len(batch))
                    await asyncio.sleep(self._poll)
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _enqueue(self, batch: list[_Queued]) -> None:
        rows = [
            (hook.webhook_id, mid, event, body)
            for event, mid, body, _ in batch
            for hook in await self._subscribers(event)
        ]
        if not rows:
            return
        async with self._engine.begin() as conn:
            # Every replica inserts every event; the unique key keeps one row. The join drops
            # subscriptions deleted since the cache was read.
            await conn.execute(
                text(
                    "INSERT INTO gateway.webhook_deliveries (webhook_id, message_id, event, body, state, attempts, "
                    "next_attempt_at) "
                    "SELECT t.w, t.m, t.e, t.b, 'pending', 0, now() "
                    "FROM unnest(CAST(:w AS uuid[]), CAST(:m AS uuid[]), CAST(:e AS text[]), CAST(:b AS bytea[])) "
                    "AS t(w, m, e, b) JOIN gateway.webhooks h ON h.webhook_id = t.w "
                    "ON CONFLICT (webhook_id, message_id) DO NOTHING"
                ),
                {
                    "w": [r[0] for r in rows],
                    "m": [r[1] for r in rows],
                    "e": [r[2] for r in rows],
                    "b": [r[3] for r in rows],
                },
            )
        self._wake.set()

    # -- delivering --------------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._wake.set()

        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                claimed: list[Delivery] = []
                free = CONCURRENCY - len(running)
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception:
                        log.exception("could not claim webhook deliveries; retrying")
                for delivery in claimed:
                    task = group.create_task(self._attempt(delivery))
                    running.add(task)
                    task.add_done_callback(finished)
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _claim(self, limit: int) -> list[Delivery]:
        """Take up to `limit` due deliveries for this replica: each is pushed a lease into the future,
        so no other replica takes it unless this one fails to finish it in time."""
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "WITH due AS (SELECT delivery_id FROM gateway.webhook_deliveries "
                    "WHERE state = 'pending' AND next_attempt_at <= now() "
                    "ORDER BY next_attempt_at LIMIT :n FOR UPDATE SKIP LOCKED) "
                    "UPDATE gateway.webhook_deliveries d SET attempts = d.attempts + 1, claimed_by = :me, "
                    "next_attempt_at = now() + make_interval(secs => :lease) "
                    "FROM due, gateway.webhooks h WHERE d.delivery_id = due.delivery_id AND h.webhook_id = d.webhook_id "
                    "RETURNING d.delivery_id, d.webhook_id, d.message_id, d.event, d.body, d.attempts, "
                    "h.url, h.secret_sealed, h.secret, h.active"
                ),
                {"n": limit, "me": self._instance, "lease": self._lease},
            )
            return [
                Delivery(
                    r.delivery_id,
                    r.webhook_id,
                    r.message_id,
                    r.event,
                    bytes(r.body),
                    r.attempts,
                    r.url,
                    bytes(r.secret_sealed) if r.secret_sealed is not None else None,
                    r.secret,
                    r.active,
                )
                for r in rows
            ]

    async def _attempt(self, delivery: Delivery) -> None:
        status, error = await self._post(delivery)
        ok = status is not None and 200 <= status < 300
        if ok:
            state, delay = "delivered", None
        elif delivery.active and delivery.attempt < ATTEMPTS:
            state, delay = "pending", self._backoff * 2 ** (delivery.attempt - 1)
        else:
            state, delay = "dead", None
        DELIVERED.labels({"delivered": "delivered", "pending": "retry", "dead": "failed"}[state]).inc()
        try:
            async with self._engine.begin() as conn:
                # Fenced by claimant and attempt: a replica whose lease ran out does not overwrite the next one.
                await conn.execute(
                    text(
                        "UPDATE gateway.webhook_deliveries SET state = :state, status = :s, error = :x, at = now(), "
                        "next_attempt_at = CASE WHEN :state = 'pending' THEN now() + make_interval(secs => :d) END, "
                        "finished_at = CASE WHEN :state = 'pending' THEN NULL ELSE now() END, "
                        "body = CASE WHEN :state = 'delivered' THEN NULL ELSE body END "
                        "WHERE delivery_id = :id AND claimed_by = :me AND attempts = :a"
                    ),
                    {
                        "state": state,
                        "s": status,
                        "x": error,
                        "d": delay or 0.0,
                        "id": delivery.delivery_id,
                        "me": self._instance,
                        "a": delivery.attempt,
                    },
                )
        except Exception:  # the lease brings the delivery back; another attempt will record it
            log.exception("could not record delivery %s to webhook %s", delivery.message_id, delivery.webhook_id)
        if not ok and state == "pending":
            self._wake.set()

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        if not delivery.active:
            return None, "the subscription was deactivated"
        if delivery.attempt > ATTEMPTS:  # its last attempt was claimed by a replica that stopped
            return None, "abandoned: the replica delivering the last attempt stopped"
        try:
            secret = self._secret(delivery)
        except security.SealError as err:
            return None, f"cannot open the signing secret (is GATEWAY_WEBHOOK_SECRET_KEY right?): {err}"
        headers = {
            "Content-Type": "application/json",
            "Shuidian-Event": delivery.event,
            "Shuidian-Message-Id": str(delivery.message_id),
            "Shuidian-Signature": security.sign_webhook(secret, int(time.time()), delivery.body),
        }
        try:
            # The whole attempt is bounded, not each phase: a receiver trickling its answer byte by
            # byte would otherwise outlast the lease, and another replica would deliver it again.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(delivery.url, content=delivery.body, headers=headers)
        except TimeoutError:
            return None, f"timeout: no complete answer within {self._timeout:g} s"
        except httpx.HTTPError as err:
            return None, f"{type(err).__name__}: {err}"[:500]
        return response.status_code, None if response.is_success else f"HTTP {response.status_code}"

    def _secret(self, delivery: Delivery) -> str:
        if delivery.sealed is None:
            if delivery.plaintext is None:
                raise security.SealError("the subscription has no secret")
            return delivery.plaintext
        return security.open_secret(self._key, delivery.webhook_id, delivery.sealed)

    async def seal_plaintext_secrets(self) -> int:
        """Seal the plaintext secrets of subscriptions created before secrets were sealed (at start-up)."""
        async with self._engine.begin() as conn:
            rows = list(
                await conn.execute(
                    text(
                        "SELECT webhook_id, secret FROM gateway.webhooks WHERE secret IS NOT NULL "
                        "FOR UPDATE SKIP LOCKED"
                    )
                )
            )
            if rows:
                await conn.execute(
                    text(
                        "UPDATE gateway.webhooks h SET secret_sealed = t.s, secret = NULL "
                        "FROM unnest(CAST(:w AS uuid[]), CAST(:s AS bytea[])) AS t(w, s) WHERE h.webhook_id = t.w"
                    ),
                    {
                        "w": [r.webhook_id for r in rows],
                        "s": [security.seal_secret(self._key, r.webhook_id, r.secret) for r in rows],
                    },
                )
        if rows:
            log.info("sealed the signing secrets of %d webhook(s)", len(rows))
        return len(rows)

    # -- housekeeping -----------------------------------------------------------------------------
    async def prune(self, delivered_days: float, dead_days: float, batch: int = PRUNE_BATCH) -> dict[str, int] | None:
        """Delete delivered rows older than `delivered_days` and dead letters older than `dead_days`,
        in batches. One replica at a time: None when another holds the housekeeping lock."""
        pruned = {"delivered": 0, "dead": 0}
        async with self._engine.connect() as conn:
            if not (await conn.execute(text(HOUSEKEEPING_LOCK))).scalar_one():
                await conn.rollback()
                return None
            await conn.commit()
            try:
                for state, days in (("delivered", delivered_days), ("dead", dead_days)):
                    while True:
                        result = await conn.execute(
                            text(
                                "DELETE FROM gateway.webhook_deliveries WHERE delivery_id IN ("
                                "SELECT delivery_id FROM gateway.webhook_deliveries WHERE state = :state "
                                "AND at < now() - make_interval(secs => :age) ORDER BY at LIMIT :n)"
                            ),
                            {"state": state, "age": days * 86400.0, "n": batch},
                        )
                        await conn.commit()
                        count = result.rowcount or 0
                        pruned[state] += count
                        PRUNED.labels(state).inc(count)
                        if count < batch:
                            break
            finally:
                try:
                    await conn.execute(text(HOUSEKEEPING_UNLOCK))
                    await conn.commit()
                except BaseException:
                    await conn.invalidate()  # closing the session releases the lock
                    raise
        if any(pruned.values()):
            log.info("pruned %(delivered)d delivered and %(dead)d dead webhook deliveries", pruned)
        return pruned

    # -- subscriptions -----------------------------------------------------------------------------
    async def check_url(self, url: str) -> None:
        """422 for a URL the gateway must not call (every delivery is checked again when it connects)."""
        try:
            await urlguard.check_url(url, self._policy)
        except urlguard.UrlRefused as err:
            raise UrlNotAllowed(
                f"webhook URL refused: {err}. 不允许的回调地址：须为公网 http(s) 地址，内网接收端需运维加入白名单 "
                "(GATEWAY_WEBHOOK_ALLOWED_NETWORKS)"
            ) from err

    async def create(self, owner: str, url: str, events: list[str]) -> dict[str, Any]:
        secret = "whsec_" + secrets.token_urlsafe(32)
        webhook_id = uuid.uuid4()
        sealed = security.seal_secret(self._key, webhook_id, secret)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO gateway.webhooks (webhook_id, owner, url, events, secret_sealed) "
                        f"VALUES (:id, :o, :u, :e, :s) RETURNING {COLUMNS}"
                    ),
                    {"id": webhook_id, "o": owner, "u": url, "e": events, "s": sealed},
                )
            ).one()
        self.invalidate()
        return {**row._asdict(), "secret": secret}

    async def get(self, owner: str | None, webhook_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT {COLUMNS} FROM gateway.webhooks WHERE webhook_id = :id AND (CAST(:o AS text) IS NULL OR owner = :o)"
                    ),
                    {"id": webhook_id, "o": owner},
                )
            ).first()
        if row is None:
            raise ObjectNotFound("no such webhook")
        return row._asdict()

    async def listing(self, owner: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {COLUMNS} FROM gateway.webhooks WHERE CAST(:o AS text) IS NULL OR owner = :o "
                    "ORDER BY created_at, webhook_id LIMIT :l OFFSET :f"
                ),
                {"o": owner, "l": limit, "f": offset},
            )
            return [r._asdict() for r in rows]

    async def update(
        self, owner: str | None, webhook_id: uuid.UUID, version: int | None, changes: dict[str, Any]
    ) -> dict[str, Any]:
        current = await self.get(owner, webhook_id)
        if version is not None and current["version"] != version:
            raise PreconditionFailed("the webhook changed since you read it; fetch it again")
        sets = "".join(f"{column} = :{column}, " for column in changes)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        f"UPDATE gateway.webhooks SET {sets}version = version + 1 "
                        f"WHERE webhook_id = :id AND version = :v RETURNING {COLUMNS}"
                    ),
                    {**changes, "id": webhook_id, "v": current["version"]},
                )
            ).first()
        if row is None:
            raise PreconditionFailed("the webhook changed since you read it; fetch it again")
        self.invalidate()
        return row._asdict()

    async def delete(self, owner: str | None, webhook_id: uuid.UUID) -> None:
        await self.get(owner, webhook_id)
        async with self._engine.begin() as conn:
            await conn.execute(text("DELETE FROM gateway.webhooks WHERE webhook_id = :id"), {"id": webhook_id})
        self.invalidate()
