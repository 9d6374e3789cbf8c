"""Rule configuration per scope, and the rules that apply to one meter."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from shuidian_alarm.api.deps import Book, Engine
from shuidian_alarm.api.schemas import Filter, Name, Strict
from shuidian_alarm.domain.detectors.connectivity import CONNECTIVITY
from shuidian_alarm.domain.rules import Rule, parse_rule, rule_to_json, scope_of
from shuidian_alarm.domain.scopes import ScopeLevel
from shuidian_shared.messages import Identifier

router = APIRouter()


class RuleIn(Strict):
    scope_level: ScopeLevel
    scope_key: Name | None = Field(default=None, description="none for the default scope")
    slot: Identifier = Field(description="alarm type or rule slot, e.g. over_voltage")
    enabled: bool = True
    rule: dict[str, Any] = Field(description='the rule, with its "kind", e.g. {"kind": "threshold", ...}')


class RuleOut(BaseModel):
    scope_level: str
    scope_key: str
    slot: str
    enabled: bool
    rule: dict[str, Any]
    builtin: bool


def _rule_out(level: str, key: str, slot: str, enabled: bool, rule: Rule, builtin: bool) -> dict[str, Any]:
    return {
        "scope_level": level,
        "scope_key": key,
        "slot": slot,
        "enabled": enabled,
        "rule": json.loads(rule_to_json(rule)),
        "builtin": builtin,
    }


@router.get("/rules", response_model=list[RuleOut], tags=["rules"], summary="Every configured rule")
async def list_rules(book: Book) -> list[dict[str, Any]]:
    await book.load()
    return [
        _rule_out(e.scope.level.value, e.scope.key, e.slot, e.enabled, e.rule, e.updated_at is None)
        for e in book.entries()
    ]


@router.put("/rules", response_model=RuleOut, tags=["rules"], summary="Set a rule at a scope (validated)")
async def put_rule(body: RuleIn, book: Book) -> dict[str, Any]:
    scope = scope_of(body.scope_level, body.scope_key)
    rule = parse_rule(body.slot, body.rule)
    stored = await book.put(scope, body.slot, body.enabled, rule)
    return _rule_out(scope.level.value, scope.key, stored.slot, stored.enabled, stored.rule, False)


@router.delete("/rules", status_code=204, tags=["rules"], summary="Remove a rule from a scope")
async def delete_rule(book: Book, scope_level: ScopeLevel, slot: Identifier, scope_key: Filter = None) -> None:
    await book.delete(scope_of(scope_level, scope_key), slot)


@router.get("/rules/effective", response_model=list[RuleOut], tags=["rules"], summary="The rules that apply to a meter")
async def effective_rules(book: Book, evaluator: Engine, meter_id: Identifier) -> list[dict[str, Any]]:
    await book.load()
    scope = await evaluator.meter_scope(meter_id)
    return [
        _rule_out("effective", meter_id, slot, True, rule, False)
        for slot, rule in book.rules_for(scope).items()
        if slot != CONNECTIVITY
    ]
