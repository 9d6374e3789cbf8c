"""Work orders for device faults, stored: the alarm hook that opens one, and the staff's queries and updates
(the rules of their status live in `domain.work_orders`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.domain.alarms import AlarmRecord
from shuidian_alarm.domain.work_orders import FAULT_TYPES, plan_update
from shuidian_alarm.errors import NotFound


async def on_alarm(conn: AsyncConnection, alarm: AlarmRecord, event: str) -> None:
    """The alarm hook: a newly raised fault opens a work order; a cleared or hand-resolved one leaves a note on it."""
    if alarm.alarm_type not in FAULT_TYPES:
        return
    if event == "raised":
        await conn.execute(
            text(
                "INSERT INTO alarm.work_orders (work_order_id, alarm_id, device_id, fault_type, estate, building) "
                "VALUES (:id, :alarm, :device, :type, :estate, :building) ON CONFLICT (alarm_id) DO NOTHING"
            ),
            {
                "id": uuid.uuid4(),
                "alarm": alarm.alarm_id,
                "device": alarm.meter_id or alarm.gateway_id or alarm.source_id,
                "type": alarm.alarm_type,
                "estate": alarm.estate,
                "building": alarm.building,
            },
        )
    elif event == "cleared":
        await conn.execute(
            text(
                "INSERT INTO alarm.work_order_notes (work_order_id, author, note) "
                "SELECT work_order_id, 'system', '告警已自动解除 · the alarm cleared by itself' "
                "FROM alarm.work_orders WHERE alarm_id = :a AND status NOT IN ('resolved', 'closed')"
            ),
            {"a": alarm.alarm_id},
        )
    elif event == "resolved":
        await conn.execute(
            text(
                "INSERT INTO alarm.work_order_notes (work_order_id, author, note) "
                "SELECT work_order_id, 'system', '告警已由工作人员手动处理（原因见告警的操作记录）"
                " · the alarm was resolved by hand (the reason is in its action log)' "
                "FROM alarm.work_orders WHERE alarm_id = :a AND status NOT IN ('resolved', 'closed')"
            ),
            {"a": alarm.alarm_id},
        )


class WorkOrders:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def query(
        self,
        *,
        estate: str | None,
        building: str | None,
        device_id: str | None,
        fault_type: str | None,
        status: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT w.*, a.severity, a.state AS alarm_state, a.message_zh, a.message_en "
                    "FROM alarm.work_orders w LEFT JOIN alarm.alarms a USING (alarm_id) "
                    "WHERE (CAST(:e AS text) IS NULL OR w.estate = :e) AND (CAST(:b AS text) IS NULL OR w.building = :b) "
                    "AND (CAST(:d AS text) IS NULL OR w.device_id = :d) AND (CAST(:t AS text) IS NULL OR w.fault_type = :t) "
                    "AND (CAST(:s AS text) IS NULL OR w.status = :s) "
                    "AND (CAST(:since AS timestamptz) IS NULL OR w.opened_at >= :since) "
                    "AND (CAST(:until AS timestamptz) IS NULL OR w.opened_at < :until) "
                    "ORDER BY w.opened_at DESC LIMIT :n"
                ),
                {
                    "e": estate,
                    "b": building,
                    "d": device_id,
                    "t": fault_type,
                    "s": status,
                    "since": since,
                    "until": until,
                    "n": limit,
                },
            )
            return [r._asdict() for r in rows]

    async def open(
        self,
        *,
        device_id: str,
        fault_type: str,
        estate: str | None,
        building: str | None,
        description: str,
        assignee: str | None,
        by: str,
    ) -> dict[str, Any]:
        """A work order opened by hand (an inspection, a tenant's call): no alarm behind it."""
        work_order_id = uuid.uuid4()
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO alarm.work_orders (work_order_id, device_id, fault_type, estate, building, "
                    "assignee, status, description, opened_by) VALUES (:w, :d, :t, :e, :b, :a, :s, :desc, :by)"
                ),
                {
                    "w": work_order_id,
                    "d": device_id,
                    "t": fault_type,
                    "e": estate,
                    "b": building,
                    "a": assignee,
                    "s": "assigned" if assignee else "open",
                    "desc": description,
                    "by": by,
                },
            )
            await conn.execute(
                text("INSERT INTO alarm.work_order_notes (work_order_id, author, note) VALUES (:w, :a, :n)"),
                {"w": work_order_id, "a": by, "n": f"人工开单 · opened by hand: {description}"},
            )
            return await self.get(work_order_id, conn)

    async def get(self, work_order_id: uuid.UUID, conn: AsyncConnection | None = None) -> dict[str, Any]:
        if conn is None:
            async with self._engine.connect() as own:
                return await self.get(work_order_id, own)
        row = (
            await conn.execute(text("SELECT * FROM alarm.work_orders WHERE work_order_id = :w"), {"w": work_order_id})
        ).first()
        if row is None:
            raise NotFound(f"no work order {work_order_id}")
        notes = await conn.execute(
            text("SELECT at, author, note FROM alarm.work_order_notes WHERE work_order_id = :w ORDER BY at"),
            {"w": work_order_id},
        )
        return {**row._asdict(), "notes": [n._asdict() for n in notes]}

    async def update(
        self,
        work_order_id: uuid.UUID,
        *,
        by: str,
        status: str | None,
        assignee: str | None,
        note: str | None,
        closing_cause: str | None,
    ) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text("SELECT status, assignee FROM alarm.work_orders WHERE work_order_id = :w FOR UPDATE"),
                    {"w": work_order_id},
                )
            ).first()
            if row is None:
                raise NotFound(f"no work order {work_order_id}")
            target, entries = plan_update(
                row.status,
                row.assignee,
                status=status,
                assignee=assignee,
                note=note,
                closing_cause=closing_cause,
            )
            await conn.execute(
                text(
                    "UPDATE alarm.work_orders SET status = :s, assignee = coalesce(:a, assignee), "
                    "closing_cause = coalesce(:c, closing_cause), updated_at = now(), "
                    "resolved_at = CASE WHEN :s IN ('resolved', 'closed') THEN coalesce(resolved_at, now()) "
                    "  WHEN :s = 'in_progress' THEN NULL ELSE resolved_at END, "
                    "closed_at = CASE WHEN :s = 'closed' THEN coalesce(closed_at, now()) ELSE closed_at END "
                    "WHERE work_order_id = :w"
                ),
                {"s": target, "a": assignee, "c": closing_cause, "w": work_order_id},
            )
            for entry in entries:
                await conn.execute(
                    text("INSERT INTO alarm.work_order_notes (work_order_id, author, note) VALUES (:w, :a, :n)"),
                    {"w": work_order_id, "a": by, "n": entry},
                )
            return await self.get(work_order_id, conn)

    async def mttr(self, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
        """Mean time to repair per estate, over orders resolved in [since, until)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT coalesce(estate, '') AS estate, count(*) AS repairs, "
                    "extract(epoch FROM avg(resolved_at - opened_at)) AS mean_seconds "
                    "FROM alarm.work_orders WHERE resolved_at IS NOT NULL "
                    "AND (CAST(:since AS timestamptz) IS NULL OR resolved_at >= :since) "
                    "AND (CAST(:until AS timestamptz) IS NULL OR resolved_at < :until) "
                    "GROUP BY 1 ORDER BY 1"
                ),
                {"since": since, "until": until},
            )
            return [
                {"estate": r.estate or None, "repairs": r.repairs, "mean_seconds": float(r.mean_seconds)} for r in rows
            ]
