"""The persisted command lifecycle: issue, attempts with back-off, results, expiry, cancellation, audit, queries.

States: pending → sent → acknowledged → confirmed | failed | expired | cancelled. Every transition is written
with its audit event and announced (CommandUpdate) in the same transaction, through the outbox.
A command is re-sent as attempt 2, 3, … under the same id; the collector runs each (id, attempt) once.
A trip for a meter whose keep-power mode is being switched off is held (pending, attempt 0) until the meter
reports the mode off, then sent: the meter would refuse it before.
A final refusal from the collector (`unsupported`: the meter cannot do it; `rejected`: a value it cannot take or
credentials the collector lacks, refused before anything was written) fails the command at once: never retried,
and its intent is dropped from the shadow so reconcile does not send it again either.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control.adapters import shadows
from shuidian_control.domain import Clock, lifecycle
from shuidian_control.errors import Conflict, NotFound
from shuidian_control.settings import ControlSettings
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    CommandKind,
    CommandOrigin,
    CommandRequested,
    CommandResult,
    CommandState,
    CommandStatus,
    CommandUpdate,
)

log = logging.getLogger(__name__)

COMMANDS_ISSUED = Counter("control_commands_issued_total", "device commands issued", ["kind", "origin"])
COMMAND_ATTEMPTS = Counter("control_command_attempts_total", "command attempts sent (first sends and retries)")
TRIPS_HELD = Counter("control_trips_held_total", "trips held until the meter's keep-power mode is confirmed off")
COMMAND_OUTCOMES = Counter("control_command_outcomes_total", "commands reaching a terminal state", ["state"])
UNKNOWN_RESULTS = Counter("control_command_results_unknown_total", "results for commands control does not know")
UNSUPPORTED = Counter(
    "control_commands_unsupported_total", "commands the meter cannot do (final, not retried)", ["kind"]
)
REJECTED = Counter(
    "control_commands_rejected_total",
    "commands the collector refused before writing to the meter: a value it cannot take, missing credentials "
    "(final, not retried)",
    ["kind"],
)


# Final refusals are counted by status (domain.lifecycle.FINAL_REFUSALS says which they are).
_REFUSALS_COUNTED: Mapping[CommandStatus, Counter] = {
    CommandStatus.UNSUPPORTED: UNSUPPORTED,
    CommandStatus.REJECTED: REJECTED,
}
_TEXT_LIMIT = 500


def clip(value: str) -> str:
    """Message text fields are bounded; the database keeps the full text."""
    return value if len(value) <= _TEXT_LIMIT else value[: _TEXT_LIMIT - 1] + "…"


@dataclass(frozen=True)
class NewCommand:
    """A command to issue: what, where, who asked and why."""

    meter_id: str
    kind: CommandKind
    origin: CommandOrigin
    reason: str
    actor: str = "system"
    account_id: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    ttl: timedelta | None = None
    command_id: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None


@dataclass(frozen=True)
class CommandQuery:
    """Filters for listing commands, newest first; `before` is the keyset cursor of the previous page."""

    meter_id: str | None = None
    meter_ids: tuple[str, ...] | None = None
    state: CommandState | None = None
    origin: CommandOrigin | None = None
    kind: CommandKind | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, uuid.UUID] | None = None
    limit: int = 100


_MODE_KINDS = sorted(k.value for k in lifecycle.KEEP_POWER_KINDS)
_COLUMNS = (
    "command_id, meter_id, kind, state, origin, reason, actor, account_id, created_at, updated_at, expires_at, "
    "detail, request_frame, response_frame, attempt, next_attempt_at, parameters, supply, shadow_version, batch_id"
)


class CommandLedger:
    """Owns control.commands and control.command_events; every write goes through here."""

    def __init__(
        self, engine: AsyncEngine, outbox: Outbox, settings: ControlSettings, source: str, clock: Clock
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source
        self.clock = clock
        self._result_timeout = timedelta(seconds=settings.result_timeout_seconds)
        self._retry = (timedelta(seconds=settings.retry_initial_seconds), timedelta(seconds=settings.retry_max_seconds))

    # --- issuing -------------------------------------------------------------------------------------------------

    async def issue(self, conn: AsyncConnection, new: NewCommand, *, shadow_version: int | None = None) -> uuid.UUID:
        """Persist and send a command in the caller's transaction; call `notify()` after commit."""
        now = self.clock()
        command_id = new.command_id or uuid.uuid4()
        supply = lifecycle.supply_after(new.kind)
        mode = lifecycle.keep_power_after(new.kind)
        if supply is not None or mode is not None:
            # An older command still open for this meter's relay/valve (or keep-power mode) is superseded by the
            # newer intent.
            same_family = "supply IS NOT NULL" if supply is not None else "kind = ANY(:modes)"
            superseded = await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE meter_id = :m AND {same_family} "
                    "AND state IN ('pending', 'sent', 'acknowledged') FOR UPDATE"
                ),
                {"m": new.meter_id, "modes": _MODE_KINDS},
            )
            for old in superseded.all():
                await self._transition(
                    conn, old, CommandState.CANCELLED, f"superseded by {command_id}", actor=new.actor
                )
        expires_at = now + (new.ttl or timedelta(seconds=self._settings.command_ttl_seconds))
        row = (
            await conn.execute(
                text(
                    "INSERT INTO control.commands (command_id, meter_id, kind, state, origin, reason, actor, account_id, "
                    "created_at, updated_at, expires_at, attempt, parameters, supply, shadow_version, batch_id) "
                    "VALUES (:c, :m, :k, 'pending', :o, :r, :who, :a, :now, :now, :e, 0, CAST(:p AS jsonb), :s, :v, :b) "
                    f"RETURNING {_COLUMNS}"
                ),
                {
                    "c": command_id,
                    "m": new.meter_id,
                    "k": new.kind.value,
                    "o": new.origin.value,
                    "r": new.reason,
                    "who": new.actor,
                    "a": new.account_id,
                    "now": now,
                    "e": expires_at,
                    "p": json.dumps(dict(new.parameters)),
                    "s": supply.value if supply else None,
                    "v": shadow_version,
                    "b": new.batch_id,
                },
            )
        ).one()
        await self._audit(conn, command_id, CommandState.PENDING, new.reason, actor=new.actor, attempt=None)
        if new.kind is CommandKind.TRIP and await shadows.trip_waits_for_keep_power_off(conn, new.meter_id):
            await self._transition(
                conn, row, CommandState.PENDING, "held until the meter confirms its keep-power mode is off"
            )
            TRIPS_HELD.inc()
        else:
            await self._send(conn, row)
        COMMANDS_ISSUED.labels(new.kind.value, new.origin.value).inc()
        log.info(
            "command %s %s for meter %s (%s: %s)", command_id, new.kind.value, new.meter_id, new.origin, new.reason
        )
        return command_id

    async def release_held(self, conn: AsyncConnection, meter_id: str) -> int:
        """Send the meter's held trips once its keep-power mode is no longer reported on; returns how many.

        The caller holds the meter's shadow lock (every path locks the shadow before its commands).
        """
        if await shadows.trip_waits_for_keep_power_off(conn, meter_id):
            return 0
        held = (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE meter_id = :m AND state = 'pending' "
                    "AND attempt = 0 AND expires_at > :now ORDER BY seq FOR UPDATE"
                ),
                {"m": meter_id, "now": self.clock()},
            )
        ).all()
        for row in held:
            await self._send(conn, row)
        return len(held)

    async def _send(self, conn: AsyncConnection, row: Row[Any]) -> None:
        """Send the next attempt of an open command and wait `result_timeout` for its result."""
        now = self.clock()
        attempt = row.attempt + 1
        request = CommandRequested(
            source=self._source,
            command_id=row.command_id,
            meter_id=row.meter_id,
            kind=CommandKind(row.kind),
            expires_at=row.expires_at,
            origin=CommandOrigin(row.origin),
            reason=clip(row.reason),
            parameters=dict(row.parameters),
            attempt=attempt,
        )
        await self._outbox.add(conn, topics.meter_command(row.meter_id), request)
        updated = (
            await conn.execute(
                text(
                    "UPDATE control.commands SET attempt = :n, next_attempt_at = :due, updated_at = :now "
                    f"WHERE command_id = :c RETURNING {_COLUMNS}"
                ),
                {"n": attempt, "due": now + self._result_timeout, "now": now, "c": row.command_id},
            )
        ).one()
        await self._transition(conn, updated, CommandState.SENT, f"attempt {attempt} sent", attempt=attempt)
        COMMAND_ATTEMPTS.inc()

    async def _transition(
        self,
        conn: AsyncConnection,
        row: Row[Any],
        state: CommandState,
        detail: str,
        *,
        actor: str = "system",
        attempt: int | None = None,
    ) -> None:
        """Move a command to `state`: row, audit event and CommandUpdate, in the caller's transaction."""
        await conn.execute(
            text(
                "UPDATE control.commands SET state = :s, detail = :d, updated_at = :now"
                + (", next_attempt_at = NULL" if state in lifecycle.TERMINAL_STATES else "")
                + " WHERE command_id = :c"
            ),
            {"s": state.value, "d": detail, "now": self.clock(), "c": row.command_id},
        )
        await self._audit(conn, row.command_id, state, detail, actor=actor, attempt=attempt)
        update = CommandUpdate(
            source=self._source,
            command_id=row.command_id,
            meter_id=row.meter_id,
            kind=CommandKind(row.kind),
            state=state,
            origin=CommandOrigin(row.origin),
            attempt=max(row.attempt, 1),
            reason=clip(row.reason),
            detail=clip(detail),
            account_id=row.account_id,
            expires_at=row.expires_at,
        )
        await self._outbox.add(conn, topics.command_update(row.meter_id), update)
        if state in lifecycle.TERMINAL_STATES:
            COMMAND_OUTCOMES.labels(state.value).inc()

    async def _audit(
        self,
        conn: AsyncConnection,
        command_id: uuid.UUID,
        state: str,
        detail: str,
        *,
        actor: str = "system",
        attempt: int | None,
        request_frame: str | None = None,
        response_frame: str | None = None,
    ) -> None:
        await conn.execute(
            text(
                "INSERT INTO control.command_events "
                "(command_id, state, detail, at, attempt, actor, request_frame, response_frame) "
                "VALUES (:c, :s, :d, :at, :n, :who, :rq, :rs)"
            ),
            {
                "c": command_id,
                "s": state,
                "d": detail,
                "at": self.clock(),
                "n": attempt,
                "who": actor,
                "rq": request_frame,
                "rs": response_frame,
            },
        )

    def notify(self) -> None:
        """Wake the outbox after a commit that queued messages."""
        self._outbox.notify()

    # --- results -------------------------------------------------------------------------------------------------

    async def on_result(self, result: CommandResult, topic: str) -> None:
        """Apply the collector's outcome for one attempt; stale or late results are audited but change nothing."""
        async with self._engine.begin() as conn:
            row = await self._lock(conn, result.command_id)
            if row is None or row.meter_id != result.meter_id:
                UNKNOWN_RESULTS.inc()
                log.warning("result for unknown command %s (meter %s)", result.command_id, result.meter_id)
                return
            await self._audit(
                conn,
                row.command_id,
                f"result:{result.status.value}",
                result.detail,
                attempt=result.attempt,
                request_frame=result.request_frame,
                response_frame=result.response_frame,
            )
            reported = lifecycle.supply_of(result.relay, result.valve)
            confirmed = result.status is CommandStatus.CONFIRMED
            keep_power = lifecycle.keep_power_after(CommandKind(row.kind)) if confirmed else None
            if reported is not None or keep_power is not None:
                await shadows.report(
                    conn, row.meter_id, reported, result.occurred_at, online=True, keep_power=keep_power
                )
            await conn.execute(
                text(
                    "UPDATE control.commands SET request_frame = coalesce(:rq, request_frame), "
                    "response_frame = coalesce(:rs, response_frame) WHERE command_id = :c"
                ),
                {"rq": result.request_frame, "rs": result.response_frame, "c": row.command_id},
            )
            await self._apply(conn, row, result)
            if keep_power is False:
                await self.release_held(conn, row.meter_id)
        self.notify()

    async def _apply(self, conn: AsyncConnection, row: Row[Any], result: CommandResult) -> None:
        """Move the command as the result says (domain.lifecycle.after_result)."""
        step = lifecycle.after_result(
            CommandState(row.state),
            row.attempt,
            row.expires_at,
            result,
            self.clock(),
            retry_initial=self._retry[0],
            retry_max=self._retry[1],
        )
        if step is None:
            return
        if step.refused is not None:
            # Without dropping the intent a refused command would fail but stay wanted in the shadow, and reconcile
            # would issue it again, to be refused again, on every sweep.
            _REFUSALS_COUNTED[step.refused].labels(row.kind).inc()
            await self._drop_intent(conn, row)
        elif step.retry_at is not None:
            await conn.execute(
                text("UPDATE control.commands SET next_attempt_at = :t WHERE command_id = :c"),
                {"t": step.retry_at, "c": row.command_id},
            )
        await self._transition(conn, row, step.state, step.detail, attempt=result.attempt)

    # --- time ----------------------------------------------------------------------------------------------------

    async def tick(self, batch: int = 500) -> int:
        """Expire commands past their TTL and send due attempts; returns how many commands moved."""
        now = self.clock()
        moved = 0
        async with self._engine.begin() as conn:
            expired = await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE state IN ('pending', 'sent', 'acknowledged') "
                    "AND expires_at <= :now ORDER BY expires_at LIMIT :n FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "n": batch},
            )
            for row in expired.all():
                await self._transition(
                    conn, row, CommandState.EXPIRED, f"TTL elapsed without confirmation after {row.attempt} attempt(s)"
                )
                moved += 1
            due = await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE state IN ('pending', 'sent', 'acknowledged') "
                    "AND next_attempt_at <= :now AND expires_at > :now ORDER BY next_attempt_at LIMIT :n "
                    "FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "n": batch},
            )
            for row in due.all():
                await self._send(conn, row)
                moved += 1
        if moved:
            self.notify()
        return moved

    # --- operator ------------------------------------------------------------------------------------------------

    async def cancel(self, command_id: uuid.UUID, reason: str, actor: str) -> dict[str, Any]:
        """Stop an open command: no further attempts. An attempt already with the collector may still run."""
        async with self._engine.begin() as conn:
            row = await self._lock(conn, command_id)
            if row is None:
                raise NotFound(f"no command {command_id}")
            if CommandState(row.state) in lifecycle.TERMINAL_STATES:
                raise Conflict(f"command {command_id} is already {row.state}")
            await self._drop_intent(conn, row)
            await self._transition(conn, row, CommandState.CANCELLED, f"cancelled: {reason}", actor=actor)
        self.notify()
        return await self.command(command_id)

    async def _drop_intent(self, conn: AsyncConnection, row: Row[Any]) -> None:
        """A cancelled or finally refused (unsupported, rejected) command's intent must not come back through
        reconcile: the meter keeps what it reports (supply), and a keep-power mode it cannot take is no longer
        wanted."""
        if row.supply is None and CommandKind(row.kind) not in lifecycle.KEEP_POWER_KINDS:
            return
        shadow = await shadows.lock(conn, row.meter_id)
        if row.supply is not None and shadow.desired is not None and shadow.desired.value == row.supply:
            await shadows.set_desired(conn, row.meter_id, shadow.reported)
        mode = lifecycle.keep_power_after(CommandKind(row.kind))
        if mode is not None and shadow.desired_keep_power is mode:
            await shadows.set_desired_keep_power(conn, row.meter_id, None)

    async def _lock(self, conn: AsyncConnection, command_id: uuid.UUID) -> Row[Any] | None:
        """Lock a command, its meter's shadow first: every path takes shadow, then command (no deadlocks)."""
        found = await self.find(conn, command_id)
        if found is None:
            return None
        await shadows.lock(conn, found.meter_id)
        locked: Row[Any] | None = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM control.commands WHERE command_id = :c FOR UPDATE"), {"c": command_id}
            )
        ).first()
        return locked

    async def find(self, conn: AsyncConnection, command_id: uuid.UUID) -> Row[Any] | None:
        return (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM control.commands WHERE command_id = :c"), {"c": command_id}
            )
        ).first()

    async def last_supply_command(self, conn: AsyncConnection, meter_id: str) -> Row[Any] | None:
        """The newest relay/valve command for a meter (reconcile reasons over it)."""
        return (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE meter_id = :m AND supply IS NOT NULL "
                    "ORDER BY seq DESC LIMIT 1"
                ),
                {"m": meter_id},
            )
        ).first()

    async def last_mode_command(self, conn: AsyncConnection, meter_id: str) -> Row[Any] | None:
        """The newest keep-power mode command for a meter (reconcile reasons over it)."""
        return (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE meter_id = :m AND kind = ANY(:modes) "
                    "ORDER BY seq DESC LIMIT 1"
                ),
                {"m": meter_id, "modes": _MODE_KINDS},
            )
        ).first()

    # --- queries -------------------------------------------------------------------------------------------------

    async def command(self, command_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = await self.find(conn, command_id)
            if row is None:
                raise NotFound(f"no command {command_id}")
            events = await conn.execute(
                text(
                    "SELECT state, detail, at, attempt, actor, request_frame, response_frame "
                    "FROM control.command_events WHERE command_id = :c ORDER BY id"
                ),
                {"c": command_id},
            )
            return {**row._asdict(), "events": [e._asdict() for e in events]}

    async def commands(self, query: CommandQuery) -> list[dict[str, Any]]:
        before_at, before_id = query.before if query.before else (None, None)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM control.commands WHERE "
                    "(CAST(:m AS text) IS NULL OR meter_id = :m) "
                    "AND (CAST(:ms AS text[]) IS NULL OR meter_id = ANY(CAST(:ms AS text[]))) "
                    "AND (CAST(:s AS text) IS NULL OR state = :s) "
                    "AND (CAST(:o AS text) IS NULL OR origin = :o) "
                    "AND (CAST(:k AS text) IS NULL OR kind = :k) "
                    "AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since) "
                    "AND (CAST(:until AS timestamptz) IS NULL OR created_at < :until) "
                    "AND (CAST(:ba AS timestamptz) IS NULL OR (created_at, command_id) < (:ba, CAST(:bi AS uuid))) "
                    "ORDER BY created_at DESC, command_id DESC LIMIT :n"
                ),
                {
                    "m": query.meter_id,
                    "ms": list(query.meter_ids) if query.meter_ids is not None else None,
                    "s": query.state.value if query.state else None,
                    "o": query.origin.value if query.origin else None,
                    "k": query.kind.value if query.kind else None,
                    "since": query.since,
                    "until": query.until,
                    "ba": before_at,
                    "bi": before_id,
                    "n": query.limit,
                },
            )
            return [r._asdict() for r in rows]
