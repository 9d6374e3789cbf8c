"""Webhook subscriptions for integrators, and their signed deliveries.

Platform events from MQTT (balance events, alarms, command results, meter states) are POSTed as
JSON to every active subscription that asked for that event, signed with the subscription's
secret: `Shuidian-Signature: t=<unix>,v1=<HMAC-SHA256(secret, "<unix>.<body>") hex>` (see
`security.verify_webhook`). Delivery is at least once (retried with back-off, up to
`ATTEMPTS` times); `Shuidian-Message-Id` lets receivers drop duplicates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import Counter
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway import security
from shuidian_gateway.auth import require
from shuidian_gateway.conventions import ERRORS, Cursor, IfMatch, Limit, decode_cursor, page, version_etag, version_of
from shuidian_gateway.errors import Forbidden, ObjectNotFound, PreconditionFailed
from shuidian_gateway.policy import Action, Principal
from shuidian_shared.messages import AlarmEvent, BalanceEvent, CommandResult, DeviceState

log = logging.getLogger(__name__)
DELIVERED = Counter("gateway_webhook_deliveries_total", "Webhook delivery attempts", ["outcome"])
Event = Literal["balance", "alarm", "command.result", "meter.state"]
EVENT_OF: dict[type[Any], str] = {
    BalanceEvent: "balance",
    AlarmEvent: "alarm",
    CommandResult: "command.result",
    DeviceState: "meter.state",
}
ATTEMPTS = 4
QUEUE_SIZE = 10_000
CACHE_SECONDS = 5.0
# Deliveries in flight at once: each may hold a resolver thread while a receiver's name is looked up.
CONCURRENCY = 4
COLUMNS = "webhook_id, owner, url, events, active, version, created_at"


class Webhooks:
    """Subscriptions in the gateway schema, and a delivery loop fed from MQTT."""

    def __init__(self, engine: AsyncEngine, client: httpx.AsyncClient, *, backoff: float = 1.0) -> None:
        self._engine = engine
        self._client = client
        self._backoff = backoff
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self._cache: tuple[float, list[Any]] = (0.0, [])
        self._in_flight = asyncio.Semaphore(CONCURRENCY)

    async def on_message(self, message: Any, topic: str) -> None:
        """MQTT handler: queue the event for delivery (never blocks the listener)."""
        event = EVENT_OF[type(message)]
        body = json.dumps(
            {
                "event": event,
                "topic": topic,
                "message_id": str(message.message_id),
                "data": message.model_dump(mode="json"),
            }
        ).encode()
        if self._queue.full():
            DELIVERED.labels("dropped").inc()
            log.warning("webhook queue full; dropped %s %s", event, message.message_id)
            return
        self._queue.put_nowait((event, str(message.message_id), body))

    async def _subscribers(self, event: str) -> list[Any]:
        expires, rows = self._cache
        if expires < time.monotonic():
            async with self._engine.connect() as conn:
                rows = list(
                    await conn.execute(
                        text("SELECT webhook_id, url, events, secret FROM gateway.webhooks WHERE active")
                    )
                )
            self._cache = (time.monotonic() + CACHE_SECONDS, rows)
        return [r for r in rows if event in r.events]

    def invalidate(self) -> None:
        self._cache = (0.0, [])

    async def run(self) -> None:
        """Supervised loop: deliver queued events, each subscription in its own task."""
        async with asyncio.TaskGroup() as group:
            while True:
                event, message_id, body = await self._queue.get()
                for hook in await self._subscribers(event):
                    group.create_task(self._deliver(hook, event, message_id, body))

    async def _deliver(self, hook: Any, event: str, message_id: str, body: bytes) -> None:
        status: int | None = None
        error: str | None = None
        attempt = 0
        for attempt in range(1, ATTEMPTS + 1):
            headers = {
                "Content-Type": "application/json",
                "Shuidian-Event": event,
                "Shuidian-Message-Id": message_id,
                "Shuidian-Signature": security.sign_webhook(hook.secret, int(time.time()), body),
            }
            try:
                async with self._in_flight:
                    response = await self._client.post(hook.url, content=body, headers=headers)
                status, error = response.status_code, None
                if response.is_success:
                    break
            except httpx.HTTPError as err:
                status, error = None, f"{type(err).__name__}: {err}"[:500]
            if attempt < ATTEMPTS:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        ok = status is not None and 200 <= status < 300
        DELIVERED.labels("delivered" if ok else "failed").inc()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO gateway.webhook_deliveries (webhook_id, message_id, event, status, error, attempts) "
                        "VALUES (:w, :m, :e, :s, :x, :a)"
                    ),
                    {
                        "w": hook.webhook_id,
                        "m": uuid.UUID(message_id),
                        "e": event,
                        "s": status,
                        "x": error,
                        "a": attempt,
                    },
                )
        except Exception:  # a delivery log failure must not stop other deliveries
            log.exception("could not log the delivery of %s to webhook %s", message_id, hook.webhook_id)

    # -- subscriptions -----------------------------------------------------------------------------
    async def create(self, owner: str, url: str, events: list[str]) -> dict[str, Any]:
        secret = "whsec_" + secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO gateway.webhooks (webhook_id, owner, url, events, secret) "
                        f"VALUES (:id, :o, :u, :e, :s) RETURNING {COLUMNS}"
                    ),
                    {"id": uuid.uuid4(), "o": owner, "u": url, "e": events, "s": secret},
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


router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)


async def _webhooks(request: Request) -> Webhooks:
    hooks: Webhooks = request.app.state.webhooks
    return hooks


Hooks = Annotated[Webhooks, Depends(_webhooks)]
Manager = Annotated[Principal, Depends(require(Action.WEBHOOKS_MANAGE))]


def _owner(principal: Principal) -> str | None:
    """System administrators see every subscription; an integrator only its own."""
    if not principal.all_estates:
        # Events carry meter and account ids, not estates: estate-scoped keys get no firehose.
        raise Forbidden("webhooks need an all-estates key / 需全部小区权限")
    return None if principal.role.value == "system_admin" else principal.name


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://bureau.example/hooks/shuidian", "events": ["balance", "alarm"]}]
        },
    )

    url: AnyHttpUrl
    events: list[Event] = Field(min_length=1, max_length=4)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl | None = None
    events: list[Event] | None = Field(default=None, min_length=1, max_length=4)
    active: bool | None = None


class WebhookOut(BaseModel):
    webhook_id: uuid.UUID
    owner: str
    url: str
    events: list[str]
    active: bool
    version: int
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signing secret; shown only this once")


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


@router.post("", status_code=201, response_model=WebhookCreated, summary="订阅 · Subscribe a URL to events")
async def create(body: WebhookIn, hooks: Hooks, principal: Manager, response: Response) -> Any:
    _owner(principal)
    created = await hooks.create(principal.name, str(body.url), sorted(set(body.events)))
    response.headers["ETag"] = version_etag(created["version"])
    return created


@router.get("", response_model=WebhookPage, summary="订阅列表 · My webhook subscriptions")
async def list_hooks(hooks: Hooks, principal: Manager, limit: Limit = 50, cursor: Cursor = None) -> Any:
    offset = decode_cursor(cursor)
    return page(await hooks.listing(_owner(principal), limit + 1, offset), offset, limit)


@router.get("/{webhook_id}", response_model=WebhookOut, summary="订阅 · A webhook subscription (ETag)")
async def get_hook(webhook_id: uuid.UUID, hooks: Hooks, principal: Manager, response: Response) -> Any:
    found = await hooks.get(_owner(principal), webhook_id)
    response.headers["ETag"] = version_etag(found["version"])
    return found


@router.patch("/{webhook_id}", response_model=WebhookOut, summary="修改订阅 · Change a subscription (If-Match)")
async def patch_hook(
    webhook_id: uuid.UUID,
    body: WebhookPatch,
    hooks: Hooks,
    principal: Manager,
    response: Response,
    if_match: IfMatch = None,
) -> Any:
    changes = body.model_dump(exclude_none=True, mode="json")
    updated = await hooks.update(_owner(principal), webhook_id, version_of(if_match), changes)
    response.headers["ETag"] = version_etag(updated["version"])
    return updated


@router.delete("/{webhook_id}", status_code=204, summary="取消订阅 · Delete a subscription")
async def delete_hook(webhook_id: uuid.UUID, hooks: Hooks, principal: Manager) -> None:
    await hooks.delete(_owner(principal), webhook_id)
