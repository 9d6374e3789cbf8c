"""Rule configuration per estate, building, meter model or meter, persisted and validated.

The built-in defaults (`domain.rules.default_rules`) apply everywhere unless a stored rule of the
same slot and scope replaces them; per slot the most specific scope wins. Every instance keeps
the whole book in memory and reloads it when the stored configuration changes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_alarm.domain.rules import Rule, RuleSet, StoredRule, default_rules, rule_from_json, rule_to_json
from shuidian_alarm.domain.scopes import RuleScope, ScopeLevel, ScopeTarget
from shuidian_alarm.errors import NotFound

log = logging.getLogger(__name__)


class RuleBook:
    """The stored rule configuration, kept in memory as a `RuleSet` that is replaced whenever the table changes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._builtin = default_rules()
        self._set = RuleSet(self._builtin)
        self._marker: tuple[Any, ...] | None = None

    @property
    def version(self) -> object:
        """A new object whenever the book changes, so callers can drop what they derived from it."""
        return self._set

    async def load(self, conn: AsyncConnection | None = None) -> None:
        """Reload the stored rules if they changed since the last load."""
        if conn is None:
            async with self._engine.connect() as own:
                await self.load(own)
            return
        marker = tuple((await conn.execute(text("SELECT count(*), max(updated_at) FROM alarm.rule_configs"))).one())
        if marker == self._marker:
            return
        rows = await conn.execute(
            text("SELECT scope_level, scope_key, slot, enabled, rule, updated_at FROM alarm.rule_configs")
        )
        stored = []
        for row in rows:
            try:
                rule = rule_from_json(json.dumps(row.rule))
            except ValidationError:
                # Validated on the way in; a row that no longer parses (older release) is skipped, loudly.
                log.error(
                    "stored %s rule at %s:%s no longer validates; ignored", row.slot, row.scope_level, row.scope_key
                )
                continue
            scope = RuleScope(level=ScopeLevel(row.scope_level), key=row.scope_key)
            stored.append(StoredRule(scope, row.slot, row.enabled, rule, row.updated_at))
        self._set, self._marker = RuleSet(self._builtin, stored), marker

    def entries(self) -> list[StoredRule]:
        """Built-in defaults not overridden at the default scope, then every stored rule."""
        return self._set.entries()

    def rules_for(self, target: ScopeTarget) -> dict[str, Rule]:
        """The effective rules of a meter or gateway, by slot."""
        return self._set.rules_for(target)

    async def put(self, scope: RuleScope, slot: str, enabled: bool, rule: Rule) -> StoredRule:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO alarm.rule_configs (scope_level, scope_key, slot, enabled, rule) "
                        "VALUES (:l, :k, :s, :e, CAST(:r AS jsonb)) ON CONFLICT (scope_level, scope_key, slot) "
                        "DO UPDATE SET enabled = EXCLUDED.enabled, rule = EXCLUDED.rule, updated_at = clock_timestamp() "
                        "RETURNING updated_at"
                    ),
                    {
                        "l": scope.level.value,
                        "k": scope.key,
                        "s": slot,
                        "e": enabled,
                        "r": rule_to_json(rule),
                    },
                )
            ).one()
            await self.load(conn)
        return StoredRule(scope, slot, enabled, rule, row.updated_at)

    async def delete(self, scope: RuleScope, slot: str) -> None:
        async with self._engine.begin() as conn:
            deleted = await conn.execute(
                text("DELETE FROM alarm.rule_configs WHERE scope_level = :l AND scope_key = :k AND slot = :s"),
                {"l": scope.level.value, "k": scope.key, "s": slot},
            )
            if deleted.rowcount == 0:
                raise NotFound(f"no {slot} rule at {scope.level.value} {scope.key!r}")
            self._marker = None
            await self.load(conn)
