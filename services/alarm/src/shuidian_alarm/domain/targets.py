"""What each meter belongs to (gateway, account, model, estate, building, room, tenant), and where an alarm's
source sits. Alarm does not own premises: billing and the collector do; `adapters.targets` keeps the copy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from shuidian_alarm.domain.scopes import ScopeTarget


@dataclass(frozen=True, kw_only=True)
class Target:
    meter_id: str
    gateway_id: str | None = None
    account_id: str | None = None
    model: str | None = None
    estate: str | None = None
    building: str | None = None
    room: str | None = None
    tenant_id: str | None = None

    def scope(self) -> ScopeTarget:
        return self._scope

    @cached_property
    def _scope(self) -> ScopeTarget:  # built once per target: looked up for every reading
        return ScopeTarget(estate_id=self.estate, building_id=self.building, model=self.model, meter_id=self.meter_id)


def meter_scope(meter_id: str, known: dict[str, Target]) -> ScopeTarget:
    """The scope a meter's rules resolve at: its described place, or the meter alone if nobody described it."""
    target = known.get(meter_id)
    return target.scope() if target is not None else ScopeTarget(meter_id=meter_id)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where an alarm's source sits: a meter, a gateway (estate and building only) or an account (its room)."""

    meter_id: str | None = None
    gateway_id: str | None = None
    estate: str | None = None
    building: str | None = None
    room: str | None = None
    tenant_id: str | None = None
