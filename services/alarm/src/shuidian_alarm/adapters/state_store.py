"""Rule states per source in PostgreSQL (`alarm.rule_states`): one row per source (meter or gateway) holding every
slot's state, locked for the transaction, so replicas sharing the subscriptions never interleave on one source.
Each instance caches parsed states keyed by the row's version and re-reads only rows another writer changed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_alarm.domain.states import SlotState, StateEncoder, States, decode_states, pending

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Saved:
    source_id: str
    version: int
    states: States


class StateStore:
    """Rule states per source in PostgreSQL, with a per-instance cache validated by row version.

    Every changed source's row is written whole, each slot's JSON encoded once per state object (`StateEncoder`).
    """

    def __init__(self, max_cached: int = 200_000) -> None:
        self._cache: dict[str, tuple[int, States]] = {}
        self._encoder = StateEncoder(max_cached)
        self._max = max_cached

    async def load(self, conn: AsyncConnection, sources: list[str]) -> tuple[dict[str, States], dict[str, int]]:
        """Lock the sources' rows (stable order) and return copies of their states and their versions."""
        # Arrays, not rows: one result row however many sources, which keeps the hot path cheap.
        ids, numbers = (
            await conn.execute(
                text(
                    "SELECT coalesce(array_agg(source_id), '{}'), coalesce(array_agg(version), '{}') FROM ("
                    "SELECT source_id, version FROM alarm.rule_states WHERE source_id = ANY(:s) "
                    "ORDER BY source_id FOR UPDATE) locked"
                ),
                {"s": sources},
            )
        ).one()
        versions = dict(zip(ids, numbers, strict=True))
        known = {s: self._cache[s][1] for s, v in versions.items() if self._cache.get(s, (None, {}))[0] == v}
        stale = [s for s in versions if s not in known]
        if stale:
            rows = await conn.execute(
                text("SELECT source_id, version, states AS raw FROM alarm.rule_states WHERE source_id = ANY(:s)"),
                {"s": stale},
            )
            for row in rows:
                try:
                    parsed = decode_states(row.raw)
                except ValidationError:
                    log.error("rule state of %s no longer parses; starting it afresh", row.source_id)
                    parsed = {}
                known[row.source_id] = parsed
                self._remember(row.source_id, row.version, parsed)
        return {s: dict(known.get(s, {})) for s in sources}, versions

    async def save(self, conn: AsyncConnection, changed: dict[str, States]) -> list[Saved]:
        if not changed:
            return []
        ids = sorted(changed)
        batch: dict[int, tuple[SlotState, str]] = {}  # a state object shared by many sources is encoded once
        saved_ids, saved_versions = (
            await conn.execute(
                text(
                    "WITH saved AS (INSERT INTO alarm.rule_states (source_id, states, pending) "
                    "SELECT * FROM unnest(CAST(:s AS text[]), CAST(:j AS text[]), CAST(:p AS boolean[])) "
                    "ON CONFLICT (source_id) DO UPDATE SET states = EXCLUDED.states, pending = EXCLUDED.pending, "
                    "version = alarm.rule_states.version + 1, updated_at = now() RETURNING source_id, version) "
                    "SELECT array_agg(source_id), array_agg(version) FROM saved"
                ),
                {
                    "s": ids,
                    "j": [self.encode(s, changed[s], batch) for s in ids],
                    "p": [pending(changed[s].values()) for s in ids],
                },
            )
        ).one()
        return [Saved(i, v, changed[i]) for i, v in zip(saved_ids, saved_versions, strict=True)]

    def committed(self, saved: list[Saved]) -> None:
        for entry in saved:
            self._remember(entry.source_id, entry.version, entry.states)

    def forget(self, sources: Iterable[str]) -> None:
        for source in sources:
            self._cache.pop(source, None)
            self._encoder.forget(source)

    def encode(self, source: str, states: States, shared: dict[int, tuple[SlotState, str]] | None = None) -> str:
        """A source's states as one JSON object (`StateEncoder.encode`)."""
        return self._encoder.encode(source, states, shared)

    def _remember(self, source: str, version: int, states: States) -> None:
        if len(self._cache) >= self._max and source not in self._cache:
            self._cache.clear()  # crude but bounded; a miss only costs a re-read
        self._cache[source] = (version, states)
