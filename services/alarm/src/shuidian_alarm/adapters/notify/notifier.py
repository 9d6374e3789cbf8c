"""Subscriptions and the persisted delivery queue.

When an alarm is raised (or escalated) the matching subscriptions each get one row in
`alarm.notifications`, written in the alarm's own transaction, so a crash loses none. A worker
claims due rows with a lease, sends them, and records every attempt: delivered, retried later with
exponential back-off (5xx, timeouts), or dead-lettered after the attempt limit or a permanent error.

Who gets what: staff subscriptions by role, optionally limited to one estate; tenant subscriptions
only ever match alarms whose source belongs to that tenant's rooms (and only tenant-facing types).
Quiet hours hold non-critical notifications until the quiet period ends. A tenant's own settings
(`preferences.py`) manage that tenant's subscriptions; a tenant who never saved any gets the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.adapters.alarms import SEVERITY_RANK
from shuidian_alarm.adapters.notify.channels import Channels
from shuidian_alarm.adapters.notify.preferences import Preferences, ensure_defaults
from shuidian_alarm.domain.alarms import AlarmRecord
from shuidian_alarm.domain.notify.delivery import (
    TENANT_ALARM_TYPES,
    DeliveryResult,
    Outgoing,
    RetryPolicy,
    alarm_payload,
    first_due,
    next_attempt,
)
from shuidian_alarm.domain.notify.templates import render
from shuidian_alarm.errors import Conflict, NotFound
from shuidian_shared.messages import utcnow

log = logging.getLogger(__name__)

DELIVERIES = Counter("alarm_notification_attempts_total", "notification delivery attempts", ["channel", "outcome"])


class Notifier:
    def __init__(
        self,
        engine: AsyncEngine,
        channels: Channels,
        *,
        timezone: str = "Asia/Shanghai",
        retry: RetryPolicy | None = None,
        concurrency: int = 20,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._channels = channels
        self._timezone = timezone
        self._retry = retry or RetryPolicy()
        self._slots = asyncio.Semaphore(concurrency)
        self._poll = poll_interval
        self._lease = lease
        self._clock = clock
        self._wake = asyncio.Event()
        self.preferences = Preferences(engine)

    # --- enqueue, inside the alarm's transaction ------------------------------------------------

    async def on_alarm(self, conn: AsyncConnection, alarm: AlarmRecord, event: str) -> None:
        """The alarm hook: queue one notification per matching subscription."""
        if event not in ("raised", "escalated"):
            return
        if event == "raised" and alarm.tenant_id is not None and alarm.alarm_type in TENANT_ALARM_TYPES:
            await ensure_defaults(conn, alarm.tenant_id)
        subscriptions = (
            await conn.execute(
                text(
                    "SELECT subscription_id, audience, tenant_id, channel, address, language, quiet_start, quiet_end "
                    "FROM alarm.subscriptions WHERE (alarm_types IS NULL OR :type = ANY(alarm_types)) "
                    f"AND {SEVERITY_RANK.format('min_severity')} <= {SEVERITY_RANK.format(':sev')} "
                    "AND ((audience = 'staff' AND (estate IS NULL OR estate = :estate)) "
                    "  OR (audience = 'tenant' AND tenant_id = :tenant AND :type = ANY(:tenant_types) AND :event = 'raised')) "
                    "ORDER BY subscription_id"
                ),
                {
                    "type": alarm.alarm_type,
                    "sev": alarm.severity.value,
                    "estate": alarm.estate,
                    "tenant": alarm.tenant_id,
                    "tenant_types": list(TENANT_ALARM_TYPES),
                    "event": event,
                },
            )
        ).all()
        if not subscriptions:
            return
        now = self._clock()
        payload = alarm_payload(alarm, event)
        payload_json = json.dumps(payload, ensure_ascii=False)  # the same for every subscription
        rows: list[dict[str, Any]] = []
        for sub in subscriptions:
            subject, body = render(alarm, event, sub.language, self._timezone, alarm.raised_at)
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "alarm": alarm.alarm_id,
                    "sub": sub.subscription_id,
                    "event": event,
                    "channel": sub.channel,
                    "address": sub.address,
                    "subject": subject,
                    "body": body,
                    "payload": payload_json,
                    "due": first_due(alarm.severity, now, sub.quiet_start, sub.quiet_end, self._timezone),
                }
            )
        await conn.execute(
            text(
                "INSERT INTO alarm.notifications (notification_id, alarm_id, subscription_id, event, channel, address, "
                "subject, body, payload, next_attempt_at) VALUES (:id, :alarm, :sub, :event, :channel, :address, "
                ":subject, :body, CAST(:payload AS jsonb), :due)"
            ),
            rows,
        )
        self._wake.set()

    # --- delivery ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            self._wake.clear()
            try:
                while await self.deliver_due() > 0:
                    pass
            except Exception:
                log.exception("notification delivery round failed; retrying")
                await asyncio.sleep(self._poll)

    async def deliver_due(self, limit: int = 100) -> int:
        """Claim up to `limit` due notifications, send them, record the outcomes; how many were attempted."""
        now = self._clock()
        async with self._engine.begin() as conn:
            claimed = (
                await conn.execute(
                    text(
                        "UPDATE alarm.notifications n SET next_attempt_at = :lease FROM alarm.subscriptions s "
                        "WHERE s.subscription_id = n.subscription_id AND n.notification_id IN ("
                        "  SELECT notification_id FROM alarm.notifications WHERE status = 'pending' "
                        "  AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :n FOR UPDATE SKIP LOCKED) "
                        "RETURNING n.*, s.secret, s.tenant_id, s.language"
                    ),
                    {"now": now, "lease": now + self._lease, "n": limit},
                )
            ).all()
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._attempt(row) for row in claimed))
        await self._record(list(zip(claimed, results, strict=True)))
        return len(claimed)

    async def _attempt(self, row: Row[Any]) -> DeliveryResult:
        channel = self._channels.get(row.channel)
        if channel is None:
            return DeliveryResult(False, False, None, f"channel {row.channel} is not configured")
        message = Outgoing(
            notification_id=row.notification_id,
            channel=row.channel,
            address=row.address,
            subject=row.subject,
            body=row.body,
            payload=dict(row.payload),
            secret=row.secret,
            tenant_id=row.tenant_id,
            language=row.language,
        )
        async with self._slots:
            try:
                return await channel.send(message)
            except Exception as err:  # a channel bug must not stall the queue
                log.exception("channel %s raised on notification %s", row.channel, row.notification_id)
                return DeliveryResult(False, True, None, f"{type(err).__name__}: {err}"[:200])

    async def _record(self, outcomes: list[tuple[Row[Any], DeliveryResult]]) -> None:
        now = self._clock()
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for row, result in outcomes:
            attempt = row.attempts + 1
            status, due, outcome = next_attempt(result, attempt, self._retry, now)
            if outcome == "dead":
                log.warning(
                    "notification %s via %s dead after %d attempt(s): %s",
                    row.notification_id,
                    row.channel,
                    attempt,
                    result.detail,
                )
            DELIVERIES.labels(row.channel, outcome).inc()
            attempts.append(
                {
                    "id": row.notification_id,
                    "n": attempt,
                    "at": now,
                    "ok": result.ok,
                    "code": result.status_code,
                    "detail": result.detail,
                }
            )
            updates.append(
                {
                    "id": row.notification_id,
                    "status": status,
                    "n": attempt,
                    "due": due,
                    "code": result.status_code,
                    "err": None if result.ok else result.detail,
                    "at": now,
                }
            )
        # One batched statement each for the whole round, not two round trips per notification.
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO alarm.delivery_attempts (notification_id, attempt, at, ok, status_code, detail) "
                    "VALUES (:id, :n, :at, :ok, :code, :detail)"
                ),
                attempts,
            )
            await conn.execute(
                text(
                    "UPDATE alarm.notifications SET status = :status, attempts = :n, next_attempt_at = :due, "
                    "last_status_code = :code, last_error = :err, "
                    "delivered_at = CASE WHEN :status = 'delivered' THEN CAST(:at AS timestamptz) END "
                    "WHERE notification_id = :id"
                ),
                updates,
            )

    # --- subscriptions and the delivery log ------------------------------------------------------

    async def subscribe(self, fields: dict[str, Any]) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO alarm.subscriptions (subscription_id, audience, role, estate, tenant_id, channel, "
                        "address, secret, language, min_severity, alarm_types, quiet_start, quiet_end) VALUES "
                        "(:subscription_id, :audience, :role, :estate, :tenant_id, :channel, :address, :secret, :language, "
                        ":min_severity, :alarm_types, :quiet_start, :quiet_end) RETURNING *"
                    ),
                    {"subscription_id": uuid.uuid4(), **fields},
                )
            ).one()
        return row._asdict()

    async def subscriptions(self, tenant_id: str | None, estate: str | None) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM alarm.subscriptions WHERE (CAST(:t AS text) IS NULL OR tenant_id = :t) "
                    "AND (CAST(:e AS text) IS NULL OR estate = :e) ORDER BY created_at"
                ),
                {"t": tenant_id, "e": estate},
            )
            return [r._asdict() for r in rows]

    async def unsubscribe(self, subscription_id: uuid.UUID) -> None:
        async with self._engine.begin() as conn:
            deleted = await conn.execute(
                text("DELETE FROM alarm.subscriptions WHERE subscription_id = :s AND managed_by IS NULL"),
                {"s": subscription_id},
            )
            if deleted.rowcount == 0:
                managed = await conn.execute(
                    text("SELECT 1 FROM alarm.subscriptions WHERE subscription_id = :s"), {"s": subscription_id}
                )
                if managed.first() is not None:
                    raise Conflict(
                        "由租户的通知设置管理 · managed by the tenant's notification settings: change those instead"
                    )
        if deleted.rowcount == 0:
            raise NotFound(f"no subscription {subscription_id}")

    async def log(
        self, alarm_id: uuid.UUID | None, subscription_id: uuid.UUID | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Notifications with their attempts, newest first."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT n.*, coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, 'at', a.at, "
                        "'ok', a.ok, 'status_code', a.status_code, 'detail', a.detail) ORDER BY a.attempt) "
                        "FROM alarm.delivery_attempts a WHERE a.notification_id = n.notification_id), '[]') AS attempt_log "
                        "FROM alarm.notifications n WHERE (CAST(:a AS uuid) IS NULL OR n.alarm_id = :a) "
                        "AND (CAST(:s AS uuid) IS NULL OR n.subscription_id = :s) "
                        "AND (CAST(:st AS text) IS NULL OR n.status = :st) ORDER BY n.created_at DESC LIMIT :n"
                    ),
                    {"a": alarm_id, "s": subscription_id, "st": status, "n": limit},
                )
            ).all()
        return [r._asdict() for r in rows]

    async def retry(self, notification_id: uuid.UUID) -> None:
        """Put a dead notification back in the queue (after fixing the receiver)."""
        async with self._engine.begin() as conn:
            updated = await conn.execute(
                text(
                    "UPDATE alarm.notifications SET status = 'pending', next_attempt_at = now() "
                    "WHERE notification_id = :id AND status = 'dead'"
                ),
                {"id": notification_id},
            )
        if updated.rowcount == 0:
            raise NotFound(f"no dead notification {notification_id}")
        self._wake.set()
