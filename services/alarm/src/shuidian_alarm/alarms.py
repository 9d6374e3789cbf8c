"""The alarm lifecycle: active → acknowledged → cleared, one open alarm per (source, type)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm import rules
from shuidian_kit.errors import NotFound
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import AlarmEvent, AlarmSeverity, AlarmState, BalanceEvent, CommandResult

log = logging.getLogger(__name__)

RAISED = Counter("alarm_alarms_raised_total", "alarms newly raised", ["alarm_type"])
CLEARED = Counter("alarm_alarms_cleared_total", "alarms cleared", ["alarm_type"])


class AlarmService:
    def __init__(self, engine: AsyncEngine, outbox: Outbox, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._source = source

    async def on_balance(self, event: BalanceEvent, topic: str) -> None:
        await self.apply(rules.on_balance(event))

    async def on_command_result(self, result: CommandResult, topic: str) -> None:
        await self.apply(rules.on_command_result(result))

    async def apply(self, decisions: list[rules.Decision]) -> None:
        if not decisions:
            return
        async with self._engine.begin() as conn:
            for decision in decisions:
                if isinstance(decision, rules.Raise):
                    await self._raise(conn, decision)
                else:
                    await self._clear(conn, decision)
        self._outbox.notify()

    async def _raise(self, conn: AsyncConnection, d: rules.Raise) -> None:
        # A re-trigger updates the open alarm instead of opening a second one.
        row = (
            await conn.execute(
                text(
                    "INSERT INTO alarm.alarms (alarm_id, source_id, alarm_type, severity, state, message_zh, message_en, details) "
                    "VALUES (:id, :s, :t, :sev, 'active', :zh, :en, CAST(:d AS jsonb)) "
                    "ON CONFLICT (source_id, alarm_type) WHERE state <> 'cleared' DO UPDATE SET "
                    "occurrences = alarm.alarms.occurrences + 1, severity = EXCLUDED.severity, "
                    "message_zh = EXCLUDED.message_zh, message_en = EXCLUDED.message_en, "
                    "details = EXCLUDED.details, updated_at = now() "
                    "RETURNING alarm_id, state, (xmax = 0) AS inserted"
                ),
                {
                    "id": uuid.uuid4(),
                    "s": d.source_id,
                    "t": d.alarm_type,
                    "sev": d.severity.value,
                    "zh": d.message_zh,
                    "en": d.message_en,
                    "d": json.dumps(d.details),
                },
            )
        ).one()
        if row.inserted:
            RAISED.labels(d.alarm_type).inc()
            log.info("alarm %s raised for %s", d.alarm_type, d.source_id)
        await self._publish(conn, row.alarm_id, d.source_id, d.alarm_type, d.severity, AlarmState(row.state), d)

    async def _clear(self, conn: AsyncConnection, d: rules.Clear) -> None:
        cleared = await conn.execute(
            text(
                "UPDATE alarm.alarms SET state = 'cleared', cleared_at = now(), updated_at = now() "
                "WHERE source_id = :s AND alarm_type = :t AND state <> 'cleared' "
                "RETURNING alarm_id, severity, message_zh, message_en"
            ),
            {"s": d.source_id, "t": d.alarm_type},
        )
        for row in cleared:
            CLEARED.labels(d.alarm_type).inc()
            event = AlarmEvent(
                source=self._source,
                alarm_id=row.alarm_id,
                alarm_type=d.alarm_type,
                source_id=d.source_id,
                severity=AlarmSeverity(row.severity),
                state=AlarmState.CLEARED,
                message_zh=row.message_zh,
                message_en=row.message_en,
            )
            await self._outbox.add(conn, topics.alarm(d.alarm_type), event)

    async def _publish(
        self,
        conn: AsyncConnection,
        alarm_id: uuid.UUID,
        source_id: str,
        alarm_type: str,
        severity: AlarmSeverity,
        state: AlarmState,
        d: rules.Raise,
    ) -> None:
        event = AlarmEvent(
            source=self._source,
            alarm_id=alarm_id,
            alarm_type=alarm_type,
            source_id=source_id,
            severity=severity,
            state=state,
            message_zh=d.message_zh,
            message_en=d.message_en,
            details=d.details,
        )
        await self._outbox.add(conn, topics.alarm(alarm_type), event)

    async def alarms(
        self, source_id: str | None, alarm_type: str | None, state: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM alarm.alarms WHERE (CAST(:s AS text) IS NULL OR source_id = :s) "
                    "AND (CAST(:t AS text) IS NULL OR alarm_type = :t) AND (CAST(:st AS text) IS NULL OR state = :st) "
                    "ORDER BY raised_at DESC LIMIT :n"
                ),
                {"s": source_id, "t": alarm_type, "st": state, "n": limit},
            )
            return [r._asdict() for r in rows]

    async def acknowledge(self, alarm_id: uuid.UUID, by: str) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE alarm.alarms SET state = CASE WHEN state = 'active' THEN 'acknowledged' ELSE state END, "
                        "acknowledged_at = coalesce(acknowledged_at, now()), acknowledged_by = coalesce(acknowledged_by, :b), "
                        "updated_at = now() WHERE alarm_id = :a RETURNING *"
                    ),
                    {"a": alarm_id, "b": by},
                )
            ).first()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        return row._asdict()
