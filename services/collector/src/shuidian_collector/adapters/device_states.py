"""Device state: each poll cycle's rows written to PostgreSQL in one statement (with the online/offline edges the
availability report reads), and the state events to publish (retained) once per change, through the local store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.store import Message
from shuidian_collector.domain.states import StateEdges, StateRow
from shuidian_shared import topics
from shuidian_shared.messages import DeviceState

log = logging.getLogger(__name__)


class DeviceStates:
    """Online/offline, relay and valve per meter: each poll cycle's rows are written to PostgreSQL in one
    statement; a change is logged and published (retained) once per edge, through the local store."""

    def __init__(self, engine: AsyncEngine, source: str, *, write_timeout: float = 5.0) -> None:
        self._engine = engine
        self.write_timeout = write_timeout
        self._db_failing = False
        self._source = source
        self._edges = StateEdges()

    def edges(self, gateway_id: str, rows: Sequence[StateRow], *, publish: bool = True) -> list[Message]:
        """Fold in one cycle's observations; return the state events to publish (the edges, retained).
        `publish=False` keeps edges quiet: the gateway event says it all."""
        events: list[Message] = []
        for edge in self._edges.fold(rows, announce=publish):
            row, current = edge.row, edge.state
            if edge.online_changed:
                log.log(
                    logging.INFO if row.online else logging.WARNING,
                    "meter %s is %s%s",
                    row.meter_id,
                    "online" if row.online else "offline",
                    f" ({row.reason})" if row.reason else "",
                )
            state = DeviceState(
                source=self._source,
                meter_id=row.meter_id,
                gateway_id=gateway_id,
                online=current.online,
                relay=current.relay,
                valve=current.valve,
                keep_power=current.keep_power,
                last_reading_at=row.reading_at,
                reason=row.reason,
            )
            events.append(Message(topics.meter_state(row.meter_id), state.model_dump_json().encode(), retain=True))
        return events

    async def write(self, gateway_id: str, rows: Sequence[StateRow]) -> None:
        """Store one cycle's rows in one statement; a database outage is logged, polling carries on."""
        if not rows:
            return
        try:
            async with asyncio.timeout(self.write_timeout), self._engine.begin() as conn:
                await conn.execute(
                    text(
                        # The online/offline edges go to online_edges in the same statement: the CTE sees the rows
                        # as they were before the upsert, so an edge is a meter new to device_state or one whose
                        # `online` changes (a gateway outage included, which publishes no per-meter event).
                        "WITH u AS (SELECT * FROM unnest(CAST(:m AS text[]), CAST(:o AS boolean[]), "
                        "CAST(:why AS text[])) AS u(m, o, why)), "
                        "prev AS (SELECT meter_id, online FROM collector.device_state WHERE meter_id = ANY(:m)), "
                        "edges AS (INSERT INTO collector.online_edges (meter_id, gateway_id, online, at, reason) "
                        "SELECT u.m, :g, u.o, now(), u.why FROM u LEFT JOIN prev ON prev.meter_id = u.m "
                        "WHERE prev.online IS DISTINCT FROM u.o) "
                        "INSERT INTO collector.device_state "
                        "(meter_id, gateway_id, online, relay, valve, keep_power, last_reading_at, reason) "
                        "SELECT m, :g, o, r, v, k, t, why FROM unnest(CAST(:m AS text[]), CAST(:o AS boolean[]), "
                        "CAST(:r AS text[]), CAST(:v AS text[]), CAST(:k AS boolean[]), CAST(:t AS timestamptz[]), "
                        "CAST(:why AS text[])) AS u(m, o, r, v, k, t, why) "
                        "ON CONFLICT (meter_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id, online = EXCLUDED.online, "
                        "relay = coalesce(EXCLUDED.relay, collector.device_state.relay), "
                        "valve = coalesce(EXCLUDED.valve, collector.device_state.valve), "
                        "keep_power = coalesce(EXCLUDED.keep_power, collector.device_state.keep_power), "
                        "last_reading_at = coalesce(EXCLUDED.last_reading_at, collector.device_state.last_reading_at), "
                        "reason = EXCLUDED.reason, updated_at = now()"
                    ),
                    {
                        "g": gateway_id,
                        "m": [r.meter_id for r in rows],
                        "o": [r.online for r in rows],
                        "r": [r.relay.value if r.relay else None for r in rows],
                        "v": [r.valve.value if r.valve else None for r in rows],
                        "k": [r.keep_power for r in rows],
                        "t": [r.reading_at for r in rows],
                        "why": [r.reason for r in rows],
                    },
                )
        except Exception as err:  # the database may be down: polling and publishing carry on
            if not self._db_failing:
                log.warning("device state not stored (database unreachable?), polling carries on: %r", err)
            self._db_failing = True
        else:
            if self._db_failing:
                log.info("device state is being stored again")
            self._db_failing = False
