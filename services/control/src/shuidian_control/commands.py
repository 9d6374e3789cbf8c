"""The command lifecycle: balance events become trip/close commands under policy; results from the
collector move commands to terminal states and update the meter's shadow.

States: pending → sent → acknowledged → confirmed | failed | expired | cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control import policy
from shuidian_control.settings import ControlSettings
from shuidian_kit.errors import NotFound, ServiceError
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    CommandKind,
    CommandOrigin,
    CommandRequested,
    CommandResult,
    CommandStatus,
    RelayState,
    Utility,
)

log = logging.getLogger(__name__)

COMMANDS_ISSUED = Counter("control_commands_issued_total", "device commands issued", ["kind", "origin"])
COMMAND_OUTCOMES = Counter("control_command_outcomes_total", "commands reaching a terminal state", ["state"])


class ControlError(ServiceError):
    """Root of control's domain errors."""


class CommandService:
    def __init__(self, engine: AsyncEngine, outbox: Outbox, settings: ControlSettings, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source

    async def on_balance(self, event: BalanceEvent, topic: str) -> None:
        target = policy.desired_relay(event.kind)
        async with self._engine.begin() as conn:
            # Serialise per account and drop anything older than what we already acted on.
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO control.account_balance_levels (account_id, last_sequence, level) "
                        "VALUES (:a, :s, :l) ON CONFLICT (account_id) DO UPDATE "
                        "SET last_sequence = EXCLUDED.last_sequence, level = EXCLUDED.level "
                        "WHERE control.account_balance_levels.last_sequence < EXCLUDED.last_sequence "
                        "RETURNING account_id"
                    ),
                    {"a": event.account_id, "s": event.sequence, "l": event.level.value},
                )
            ).first()
            if row is None:
                log.info("ignored stale balance event %s #%d", event.account_id, event.sequence)
                return
            if target is None:
                return
            for meter in event.meters:
                if meter.utility is not Utility.ELECTRICITY:
                    continue  # prepaid water valves follow their own estate policy (not enabled here)
                await self._set_desired(
                    conn,
                    meter.meter_id,
                    target,
                    origin=CommandOrigin.BILLING,
                    reason=f"balance {event.kind.value} ({event.balance} CNY, #{event.sequence})",
                    account_id=event.account_id,
                )
        self._outbox.notify()

    async def _set_desired(
        self,
        conn: AsyncConnection,
        meter_id: str,
        target: RelayState,
        *,
        origin: CommandOrigin,
        reason: str,
        account_id: str | None,
    ) -> uuid.UUID | None:
        """Record the new intent; issue a command only when the intent actually changes (one trip per exhaustion)."""
        changed = (
            await conn.execute(
                text(
                    "INSERT INTO control.shadows (meter_id, desired_relay, version) VALUES (:m, :d, 1) "
                    "ON CONFLICT (meter_id) DO UPDATE SET desired_relay = EXCLUDED.desired_relay, "
                    "version = control.shadows.version + 1, updated_at = now() "
                    "WHERE control.shadows.desired_relay IS DISTINCT FROM EXCLUDED.desired_relay "
                    "RETURNING version"
                ),
                {"m": meter_id, "d": target.value},
            )
        ).first()
        if changed is None:
            return None
        kind = policy.command_for(target, self._settings.restore_command)
        return await self._issue(conn, meter_id, kind, origin=origin, reason=reason, account_id=account_id)

    async def _issue(
        self,
        conn: AsyncConnection,
        meter_id: str,
        kind: CommandKind,
        *,
        origin: CommandOrigin,
        reason: str,
        account_id: str | None,
        command_id: uuid.UUID | None = None,
        ttl: timedelta | None = None,
    ) -> uuid.UUID:
        command_id = command_id or uuid.uuid4()
        expires_at = datetime.now(UTC) + (ttl or timedelta(seconds=self._settings.command_ttl_seconds))
        # Older commands for the same meter that are still open are superseded by the newer intent.
        superseded = await conn.execute(
            text(
                "UPDATE control.commands SET state = 'cancelled', updated_at = now(), detail = 'superseded' "
                "WHERE meter_id = :m AND state IN ('pending', 'sent', 'acknowledged') RETURNING command_id"
            ),
            {"m": meter_id},
        )
        for (old_id,) in superseded:
            await self._audit(conn, old_id, "cancelled", f"superseded by {command_id}")
        await conn.execute(
            text(
                "INSERT INTO control.commands (command_id, meter_id, kind, state, origin, reason, account_id, expires_at) "
                "VALUES (:c, :m, :k, 'sent', :o, :r, :a, :e)"
            ),
            {
                "c": command_id,
                "m": meter_id,
                "k": kind.value,
                "o": origin.value,
                "r": reason,
                "a": account_id,
                "e": expires_at,
            },
        )
        await self._audit(conn, command_id, "sent", reason)
        request = CommandRequested(
            source=self._source,
            command_id=command_id,
            meter_id=meter_id,
            kind=kind,
            expires_at=expires_at,
            origin=origin,
            reason=reason,
        )
        await self._outbox.add(conn, topics.meter_command(meter_id), request)
        COMMANDS_ISSUED.labels(kind.value, origin.value).inc()
        log.info("command %s %s for meter %s (%s)", command_id, kind.value, meter_id, reason)
        return command_id

    @staticmethod
    async def _audit(conn: AsyncConnection, command_id: uuid.UUID, state: str, detail: str) -> None:
        await conn.execute(
            text("INSERT INTO control.command_events (command_id, state, detail) VALUES (:c, :s, :d)"),
            {"c": command_id, "s": state, "d": detail},
        )

    async def on_result(self, result: CommandResult, topic: str) -> None:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text("SELECT kind, state FROM control.commands WHERE command_id = :c FOR UPDATE"),
                    {"c": result.command_id},
                )
            ).first()
            if row is None:
                log.warning("result for unknown command %s", result.command_id)
                return
            await self._audit(conn, result.command_id, result.status.value, result.detail)
            if result.relay is not None:
                await conn.execute(
                    text(
                        "INSERT INTO control.shadows (meter_id, reported_relay) VALUES (:m, :r) "
                        "ON CONFLICT (meter_id) DO UPDATE SET reported_relay = EXCLUDED.reported_relay, updated_at = now()"
                    ),
                    {"m": result.meter_id, "r": result.relay.value},
                )
            if row.state in policy.TERMINAL_STATES:
                return  # a late result never reopens a finished (or superseded) command
            await conn.execute(
                text(
                    "UPDATE control.commands SET state = :s, detail = :d, request_frame = "
                    "coalesce(:f, request_frame), updated_at = now() WHERE command_id = :c"
                ),
                {"s": result.status.value, "d": result.detail, "f": result.request_frame, "c": result.command_id},
            )
        if result.status is not CommandStatus.ACKNOWLEDGED:
            COMMAND_OUTCOMES.labels(result.status.value).inc()

    async def request(
        self,
        meter_id: str,
        kind: CommandKind,
        *,
        origin: CommandOrigin,
        reason: str,
        ttl: timedelta | None = None,
        command_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """An operator or integrator command; the shadow's intent follows relay commands."""
        async with self._engine.begin() as conn:
            if command_id is not None:
                existing = (
                    await conn.execute(
                        text("SELECT meter_id, kind FROM control.commands WHERE command_id = :c"), {"c": command_id}
                    )
                ).first()
                if existing is not None:
                    if (existing.meter_id, existing.kind) != (meter_id, kind.value):
                        raise ControlError(
                            "command id reused for a different command", code="idempotency_conflict", status_code=409
                        )
                    return command_id
            target = policy.relay_after(kind)
            if target is not None:
                await conn.execute(
                    text(
                        "INSERT INTO control.shadows (meter_id, desired_relay, version) VALUES (:m, :d, 1) "
                        "ON CONFLICT (meter_id) DO UPDATE SET desired_relay = EXCLUDED.desired_relay, "
                        "version = control.shadows.version + 1, updated_at = now()"
                    ),
                    {"m": meter_id, "d": target.value},
                )
            issued = await self._issue(
                conn, meter_id, kind, origin=origin, reason=reason, account_id=None, command_id=command_id, ttl=ttl
            )
        self._outbox.notify()
        return issued

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.expiry_check_seconds)
            async with self._engine.begin() as conn:
                expired = await conn.execute(
                    text(
                        "UPDATE control.commands SET state = 'expired', updated_at = now(), detail = 'TTL elapsed' "
                        "WHERE state IN ('pending', 'sent', 'acknowledged') AND expires_at < now() RETURNING command_id"
                    )
                )
                for (command_id,) in expired:
                    await self._audit(conn, command_id, "expired", "TTL elapsed without confirmation")
                    COMMAND_OUTCOMES.labels("expired").inc()

    async def command(self, command_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.commands WHERE command_id = :c"), {"c": command_id})
            ).first()
            if row is None:
                raise NotFound(f"no command {command_id}")
            events = await conn.execute(
                text("SELECT state, detail, at FROM control.command_events WHERE command_id = :c ORDER BY id"),
                {"c": command_id},
            )
            return {**row._asdict(), "events": [e._asdict() for e in events]}

    async def commands(self, meter_id: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM control.commands WHERE (CAST(:m AS text) IS NULL OR meter_id = :m) "
                    "AND (CAST(:s AS text) IS NULL OR state = :s) ORDER BY created_at DESC LIMIT :n"
                ),
                {"m": meter_id, "s": state, "n": limit},
            )
            return [r._asdict() for r in rows]

    async def shadow(self, meter_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.shadows WHERE meter_id = :m"), {"m": meter_id})
            ).first()
        if row is None:
            raise NotFound(f"no shadow for meter {meter_id}")
        return row._asdict()
