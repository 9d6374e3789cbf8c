"""Scheduled operations: a command for a building (or a list of meters) every day at a local time, or once at
an instant.

Each run is recorded on the schedule row in the transaction that issues its commands, so a restart neither
skips nor repeats an occurrence; one missed while control was down runs if control is back within the grace,
otherwise it is logged and skipped. A one-shot schedule disables itself after its run.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.adapters.automation import Automation
from shuidian_control.adapters.policy_store import PolicyStore
from shuidian_control.domain import Clock
from shuidian_control.domain.operations import OperatorRequest
from shuidian_control.domain.schedules import ScheduleSpec, due_occurrence
from shuidian_control.errors import Conflict, NotFound
from shuidian_shared.messages import CommandKind, CommandOrigin

log = logging.getLogger(__name__)


class Scheduler:
    """Stores scheduled operations and runs the due ones (each occurrence once, in the transaction of its commands)."""

    def __init__(
        self, engine: AsyncEngine, automation: Automation, store: PolicyStore, grace: timedelta, clock: Clock
    ) -> None:
        self._engine = engine
        self._automation = automation
        self._store = store
        self._grace = grace
        self._clock = clock

    async def create(self, spec: ScheduleSpec, actor: str) -> dict[str, Any]:
        """Store a schedule; creating a one-shot again with the same command id returns the first one."""
        if spec.command_id is not None:
            async with self._engine.connect() as conn:
                existing = (
                    await conn.execute(
                        text("SELECT * FROM control.schedules WHERE command_id = :c"), {"c": spec.command_id}
                    )
                ).first()
            if existing is not None:
                if (existing.kind, list(existing.meters)) != (spec.kind.value, sorted(set(spec.meters))):
                    raise Conflict("指令编号已被占用 · command id reused for a different schedule")
                return existing._asdict()
        schedule_id = uuid.uuid4()
        async with self._engine.begin() as conn:
            # A daily schedule runs from its next occurrence on: one created at 23:10 for 23:00 first runs tomorrow.
            await conn.execute(
                text(
                    "INSERT INTO control.schedules (schedule_id, name, building_id, meters, kind, parameters, reason, "
                    "ttl_seconds, at_local, run_at, command_id, last_occurrence, created_by) VALUES (:i, :n, :b, :m, :k, "
                    "CAST(:p AS jsonb), :r, :ttl, :t, :at, :c, :last, :who)"
                ),
                {
                    "i": schedule_id,
                    "n": spec.name,
                    "b": spec.building_id,
                    "m": sorted(set(spec.meters)),
                    "k": spec.kind.value,
                    "p": json.dumps(dict(spec.parameters)),
                    "r": spec.reason,
                    "ttl": spec.ttl_seconds,
                    "t": spec.at_local,
                    "at": spec.run_at,
                    "c": spec.command_id,
                    "last": self._clock() if spec.at_local is not None else None,
                    "who": actor,
                },
            )
            when = spec.at_local or spec.run_at
            await self._store.log(
                conn, f"schedule:{schedule_id}", "created", f"{spec.name}: {spec.kind.value} at {when}", actor
            )
        return await self.get(schedule_id)

    async def get(self, schedule_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.schedules WHERE schedule_id = :i"), {"i": schedule_id})
            ).first()
        if row is None:
            raise NotFound(f"no schedule {schedule_id}")
        return row._asdict()

    async def list(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(text("SELECT * FROM control.schedules ORDER BY created_at, schedule_id"))
            return [r._asdict() for r in rows]

    async def delete(self, schedule_id: uuid.UUID, actor: str) -> None:
        async with self._engine.begin() as conn:
            gone = (
                await conn.execute(
                    text("DELETE FROM control.schedules WHERE schedule_id = :i RETURNING name"), {"i": schedule_id}
                )
            ).first()
            if gone is None:
                raise NotFound(f"no schedule {schedule_id}")
            await self._store.log(conn, f"schedule:{schedule_id}", "deleted", gone.name, actor)

    async def run_due(self) -> int:
        """Run every schedule whose latest occurrence has not run yet and is within the grace; returns runs."""
        now = self._clock()
        runs = 0
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT * FROM control.schedules WHERE enabled AND (run_at IS NULL OR run_at <= :now) "
                        "ORDER BY schedule_id FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now},
                )
            ).all()
            for row in rows:
                occurrence = due_occurrence(
                    now,
                    run_at=row.run_at,
                    at_local=row.at_local,
                    last_occurrence=row.last_occurrence,
                    tz=self._store.tz,
                )
                if occurrence is None:
                    continue
                await conn.execute(
                    text(
                        "UPDATE control.schedules SET last_occurrence = :o, enabled = run_at IS NULL "
                        "WHERE schedule_id = :i"
                    ),
                    {"o": occurrence, "i": row.schedule_id},
                )
                if now - occurrence > self._grace:
                    log.warning("schedule %s missed its %s run (control was down)", row.name, occurrence.isoformat())
                    continue
                meters = set(row.meters)
                if row.building_id:
                    meters |= set(await self._store.building_meters(conn, row.building_id))
                when = f"{row.at_local:%H:%M}" if row.at_local else occurrence.isoformat()
                request = OperatorRequest(
                    kind=CommandKind(row.kind),
                    reason=f"schedule {row.name} at {when}" + (f": {row.reason}" if row.reason else ""),
                    actor=f"schedule:{row.schedule_id}",
                    origin=CommandOrigin.SCHEDULE,
                    parameters=dict(row.parameters),
                    ttl=timedelta(seconds=row.ttl_seconds) if row.ttl_seconds else None,
                    command_id=row.command_id if len(meters) == 1 else None,
                )
                _, outcomes = await self._automation.operate_in(conn, sorted(meters), request)
                log.info("schedule %s ran on %d meter(s)", row.name, len(outcomes))
                runs += 1
        if runs:
            self._automation.notify()
        return runs
