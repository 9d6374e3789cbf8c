"""The alarm lifecycle: active → acknowledged → cleared, one open alarm per (source, type).

A re-trigger updates the open alarm (occurrences, last seen, severity never lowered); an alarm left
unacknowledged too long escalates one severity step at a time. Every change is published through the
outbox, and notifications and work orders are queued in the same transaction as the alarm itself.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.adapters import targets
from shuidian_alarm.domain.alarms import AlarmQuery, AlarmRecord, decode_cursor, encode_cursor, hook_order
from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.targets import Placement
from shuidian_alarm.errors import InvalidQuery, InvalidTransition, NotFound, VersionConflict
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import AlarmEvent, AlarmSeverity, AlarmState

log = logging.getLogger(__name__)

RAISED = Counter("alarm_alarms_raised_total", "alarms newly raised", ["alarm_type"])
CLEARED = Counter("alarm_alarms_cleared_total", "alarms cleared", ["alarm_type"])
ESCALATED = Counter("alarm_alarms_escalated_total", "alarms escalated for want of acknowledgement", ["alarm_type"])

SEVERITY_RANK = "array_position(ARRAY['info','warning','major','critical'], {})"


def record_of(row: Row[Any]) -> AlarmRecord:
    """An alarm row as an AlarmRecord."""
    r = row._mapping
    return AlarmRecord(
        alarm_id=r["alarm_id"],
        source_id=r["source_id"],
        alarm_type=r["alarm_type"],
        severity=AlarmSeverity(r["severity"]),
        state=AlarmState(r["state"]),
        message_zh=r["message_zh"],
        message_en=r["message_en"],
        details=dict(r["details"]),
        meter_id=r["meter_id"],
        gateway_id=r["gateway_id"],
        estate=r["estate"],
        building=r["building"],
        room=r["room"],
        tenant_id=r["tenant_id"],
        occurrences=r["occurrences"],
        escalation_level=r["escalation_level"],
        raised_at=r["raised_at"],
    )


# Called inside the alarm's transaction when an alarm is raised, escalated or cleared.
AlarmHook = Callable[[AsyncConnection, AlarmRecord, str], Awaitable[None]]


class AlarmService:
    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        source: str,
        *,
        hooks: Sequence[AlarmHook] = (),
        escalate_after: timedelta = timedelta(minutes=30),
        max_escalations: int = 2,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._source = source
        self._hooks = list(hooks)
        self._escalate_after = escalate_after
        self._max_escalations = max_escalations

    def add_hook(self, hook: AlarmHook) -> None:
        self._hooks.append(hook)

    async def apply(self, decisions: Sequence[Decision]) -> None:
        """Apply decisions in their own transaction."""
        if not decisions:
            return
        async with self._engine.begin() as conn:
            await self.apply_in(conn, decisions)
        self._outbox.notify()

    async def apply_in(self, conn: AsyncConnection, decisions: Sequence[Decision]) -> None:
        """Apply decisions inside the caller's transaction (the caller notifies the outbox after commit).

        Rows are locked in one stable key order, so two transactions touching the same rows wait for each
        other instead of deadlocking: first every alarm row in (source, type) order, then the hooks run in
        (tenant, source, type) order, since they write rows per tenant (a tenant's default subscriptions) and
        per alarm (work orders). The sort is stable: the decisions of one (source, type) keep their order.
        """
        raised = sorted({d.source_id for d in decisions if isinstance(d, Raise) and d.placement is None})
        where = await targets.placements(conn, raised) if raised else {}
        events: list[tuple[AlarmRecord, str]] = []
        for decision in sorted(decisions, key=lambda d: (d.source_id, d.alarm_type)):
            if isinstance(decision, Raise):
                at = decision.placement or where.get(decision.source_id, Placement())
                events += await self._raise(conn, decision, at)
            else:
                events += await self._clear(conn, decision)
        await self._run_hooks(conn, events)

    async def _raise(self, conn: AsyncConnection, d: Raise, at: Placement) -> list[tuple[AlarmRecord, str]]:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO alarm.alarms (alarm_id, source_id, alarm_type, severity, state, message_zh, message_en, "
                    "details, meter_id, gateway_id, estate, building, room, tenant_id) "
                    "VALUES (:id, :s, :t, :sev, 'active', :zh, :en, CAST(:d AS jsonb), :meter, :gw, :estate, :building, "
                    ":room, :tenant) "
                    "ON CONFLICT (source_id, alarm_type) WHERE state <> 'cleared' DO UPDATE SET "
                    "occurrences = alarm.alarms.occurrences + 1, last_seen_at = now(), "
                    f"severity = CASE WHEN {SEVERITY_RANK.format('EXCLUDED.severity')} > {SEVERITY_RANK.format('alarm.alarms.severity')} "
                    "THEN EXCLUDED.severity ELSE alarm.alarms.severity END, "
                    "message_zh = EXCLUDED.message_zh, message_en = EXCLUDED.message_en, "
                    "details = EXCLUDED.details, updated_at = now() "
                    "RETURNING *, (xmax = 0) AS inserted"
                ),
                {
                    "id": uuid.uuid4(),
                    "s": d.source_id,
                    "t": d.alarm_type,
                    "sev": d.severity.value,
                    "zh": d.message_zh,
                    "en": d.message_en,
                    "d": json.dumps(d.details),
                    "meter": at.meter_id,
                    "gw": at.gateway_id,
                    "estate": at.estate,
                    "building": at.building,
                    "room": at.room,
                    "tenant": at.tenant_id,
                },
            )
        ).one()
        record = record_of(row)
        await self._publish(conn, record)
        if not row.inserted:
            return []
        RAISED.labels(d.alarm_type).inc()
        log.info("alarm %s raised for %s", d.alarm_type, d.source_id)
        return [(record, "raised")]

    async def _clear(self, conn: AsyncConnection, d: Clear) -> list[tuple[AlarmRecord, str]]:
        cleared = await conn.execute(
            text(
                "UPDATE alarm.alarms SET state = 'cleared', cleared_at = now(), updated_at = now() "
                "WHERE source_id = :s AND alarm_type = :t AND state <> 'cleared' RETURNING *"
            ),
            {"s": d.source_id, "t": d.alarm_type},
        )
        events: list[tuple[AlarmRecord, str]] = []
        for row in cleared.all():
            CLEARED.labels(d.alarm_type).inc()
            record = record_of(row)
            await self._publish(conn, record)
            events.append((record, "cleared"))
        return events

    async def _run_hooks(self, conn: AsyncConnection, events: Sequence[tuple[AlarmRecord, str]]) -> None:
        """Run the hooks for every event in (tenant, source, type) order: the rows they lock (per tenant, then per
        alarm) are then taken in the same order by every transaction. Stable, so one alarm's events keep theirs."""
        for record, event in sorted(events, key=hook_order):
            for hook in self._hooks:
                await hook(conn, record, event)

    async def _publish(self, conn: AsyncConnection, record: AlarmRecord) -> None:
        event = AlarmEvent(
            source=self._source,
            alarm_id=record.alarm_id,
            alarm_type=record.alarm_type,
            source_id=record.source_id,
            severity=record.severity,
            state=record.state,
            message_zh=record.message_zh,
            message_en=record.message_en,
            details=record.details,
        )
        await self._outbox.add(conn, topics.alarm(record.alarm_type), event)

    async def escalate(self, now: datetime) -> int:
        """Raise by one severity step every active alarm left unacknowledged for `escalate_after` (since the last step).

        The rows are locked first in (source, type) order, the order `apply_in` takes them in (byte order, as
        Python sorts), so an escalation and an evaluation re-triggering several of the same alarms serialise
        instead of deadlocking; a row someone else changed meanwhile is judged again as it now stands."""
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "WITH due AS (SELECT alarm_id FROM alarm.alarms WHERE state = 'active' "
                        "AND escalation_level < :max AND coalesce(escalated_at, raised_at) <= :due "
                        'ORDER BY source_id COLLATE "C", alarm_type COLLATE "C" FOR UPDATE) '
                        "UPDATE alarm.alarms a SET escalation_level = a.escalation_level + 1, escalated_at = :now, "
                        "severity = CASE a.severity WHEN 'info' THEN 'warning' WHEN 'warning' THEN 'major' "
                        "ELSE 'critical' END, updated_at = now() FROM due WHERE a.alarm_id = due.alarm_id "
                        "AND a.state = 'active' AND a.escalation_level < :max "
                        "AND coalesce(a.escalated_at, a.raised_at) <= :due RETURNING a.*"
                    ),
                    {"now": now, "max": self._max_escalations, "due": now - self._escalate_after},
                )
            ).all()
            events: list[tuple[AlarmRecord, str]] = []
            for row in rows:
                record = record_of(row)
                ESCALATED.labels(record.alarm_type).inc()
                log.warning("alarm %s on %s escalated to %s", record.alarm_type, record.source_id, record.severity)
                await self._publish(conn, record)
                events.append((record, "escalated"))
            await self._run_hooks(conn, events)
        if rows:
            self._outbox.notify()
        return len(rows)

    async def query(self, q: AlarmQuery) -> tuple[list[dict[str, Any]], str | None]:
        """History newest first, filtered; the cursor of the next page when there may be one."""
        if q.state is not None and q.state not in {s.value for s in AlarmState}:
            raise InvalidQuery(f"state must be one of {[s.value for s in AlarmState]}")
        before = decode_cursor(q.cursor) if q.cursor else None
        params: dict[str, Any] = {
            "estate": q.estate,
            "building": q.building,
            "src": q.source_id,
            "meter": q.meter_id,
            "type": q.alarm_type,
            "types": list(q.alarm_types) if q.alarm_types is not None else None,
            "state": q.state,
            "tenant": q.tenant_id,
            "since": q.since,
            "until": q.until,
            "b_at": before[0] if before else None,
            "b_id": before[1] if before else None,
            "n": q.limit,
        }
        filters = " AND ".join(
            f"(CAST(:{p} AS {t}) IS NULL OR {cond})"
            for p, t, cond in (
                ("estate", "text", "estate = :estate"),
                ("building", "text", "building = :building"),
                ("src", "text", "source_id = :src"),
                ("meter", "text", "meter_id = :meter"),
                ("type", "text", "alarm_type = :type"),
                ("types", "text[]", "alarm_type = ANY(:types)"),
                ("state", "text", "state = :state"),
                ("tenant", "text", "tenant_id = :tenant"),
                ("since", "timestamptz", "raised_at >= :since"),
                ("until", "timestamptz", "raised_at < :until"),
                ("b_at", "timestamptz", "(raised_at, alarm_id) < (:b_at, :b_id)"),
            )
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT * FROM alarm.alarms WHERE {filters} ORDER BY raised_at DESC, alarm_id DESC LIMIT :n"),
                params,
            )
            found = [r._asdict() for r in rows]
        more = encode_cursor(found[-1]["raised_at"], found[-1]["alarm_id"]) if len(found) == q.limit else None
        return found, more

    async def alarms(
        self, source_id: str | None, alarm_type: str | None, state: str | None, limit: int
    ) -> list[dict[str, Any]]:
        found, _ = await self.query(AlarmQuery(source_id=source_id, alarm_type=alarm_type, state=state, limit=limit))
        return found

    async def get(self, alarm_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM alarm.alarms WHERE alarm_id = :a"), {"a": alarm_id})).first()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        return row._asdict()

    async def _lock(self, conn: AsyncConnection, alarm_id: uuid.UUID, expected_version: int | None) -> Row[Any]:
        """The alarm's row, locked for a staff action; refused when the client's `expected_version` is stale."""
        row = (
            await conn.execute(text("SELECT * FROM alarm.alarms WHERE alarm_id = :a FOR UPDATE"), {"a": alarm_id})
        ).first()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        if expected_version is not None and expected_version != row.version:
            raise VersionConflict(
                f"alarm {alarm_id} is at version {row.version}, not {expected_version}: it changed since it was read"
            )
        return row

    async def _audit(self, conn: AsyncConnection, row: Row[Any], action: str, actor: str, reason: str | None) -> None:
        await conn.execute(
            text(
                "INSERT INTO alarm.alarm_actions (alarm_id, action, actor, reason, version) VALUES (:a, :x, :b, :r, :v)"
            ),
            {"a": row.alarm_id, "x": action, "b": actor, "r": reason, "v": row.version},
        )

    async def acknowledge(self, alarm_id: uuid.UUID, by: str, expected_version: int | None = None) -> dict[str, Any]:
        """Acknowledge an active alarm (a no-op on one already acknowledged or cleared, so a retry is safe)."""
        async with self._engine.begin() as conn:
            row = await self._lock(conn, alarm_id, expected_version)
            if row.state == AlarmState.ACTIVE.value:
                row = (
                    await conn.execute(
                        text(
                            "UPDATE alarm.alarms SET state = 'acknowledged', acknowledged_at = now(), "
                            "acknowledged_by = :b, updated_at = now() WHERE alarm_id = :a RETURNING *"
                        ),
                        {"a": alarm_id, "b": by},
                    )
                ).one()
                await self._audit(conn, row, "acknowledge", by, None)
                await self._publish(conn, record_of(row))
        self._outbox.notify()
        return row._asdict()

    async def resolve(
        self, alarm_id: uuid.UUID, by: str, reason: str, expected_version: int | None = None
    ) -> dict[str, Any]:
        """Staff resolve an open alarm by hand (处理完毕): it is cleared with who and why, audited; the next
        occurrence of the same (source, type) opens a new alarm. Resolving a cleared alarm is refused."""
        async with self._engine.begin() as conn:
            row = await self._lock(conn, alarm_id, expected_version)
            if row.state == AlarmState.CLEARED.value:
                raise InvalidTransition(f"alarm {alarm_id} is already cleared; a recurrence opens a new alarm")
            row = (
                await conn.execute(
                    text(
                        "UPDATE alarm.alarms SET state = 'cleared', cleared_at = now(), resolved_at = now(), "
                        "resolved_by = :b, resolution = :r, updated_at = now() WHERE alarm_id = :a RETURNING *"
                    ),
                    {"a": alarm_id, "b": by, "r": reason},
                )
            ).one()
            await self._audit(conn, row, "resolve", by, reason)
            record = record_of(row)
            CLEARED.labels(record.alarm_type).inc()
            await self._publish(conn, record)
            await self._run_hooks(conn, [(record, "resolved")])
        self._outbox.notify()
        log.info("alarm %s resolved by hand by %s", alarm_id, by)
        return row._asdict()

    async def actions(self, alarm_id: uuid.UUID) -> list[dict[str, Any]]:
        """The staff actions on an alarm, oldest first (the audit trail)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT action, actor, reason, version, at FROM alarm.alarm_actions WHERE alarm_id = :a "
                    "ORDER BY action_id"
                ),
                {"a": alarm_id},
            )
            return [dict(r._mapping) for r in rows]
