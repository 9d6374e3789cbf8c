"""Where a rule applies: everywhere, or one estate, building, meter model or meter; the more specific wins."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class ScopeLevel(StrEnum):
    DEFAULT = "default"
    ESTATE = "estate"
    BUILDING = "building"
    MODEL = "model"  # meter model (device profile)
    METER = "meter"


# Least to most specific. A model setting beats a building's: it describes what the hardware is rated for.
PRECEDENCE: Final = (ScopeLevel.DEFAULT, ScopeLevel.ESTATE, ScopeLevel.BUILDING, ScopeLevel.MODEL, ScopeLevel.METER)


@dataclass(frozen=True, kw_only=True)
class ScopeTarget:
    """What a meter (or a gateway: estate and building only) belongs to."""

    estate_id: str | None = None
    building_id: str | None = None
    model: str | None = None
    meter_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class RuleScope:
    """Where a rule applies: everywhere, or one estate, building, meter model or meter."""

    level: ScopeLevel
    key: str = ""

    def __post_init__(self) -> None:
        if (self.level is ScopeLevel.DEFAULT) != (self.key == ""):
            raise ValueError("the default scope has no key; every other scope needs one")

    def applies_to(self, target: ScopeTarget) -> bool:
        """Whether a meter or gateway described by `target` falls inside this scope."""
        match self.level:
            case ScopeLevel.DEFAULT:
                return True
            case ScopeLevel.ESTATE:
                return self.key == target.estate_id
            case ScopeLevel.BUILDING:
                return self.key == target.building_id
            case ScopeLevel.MODEL:
                return self.key == target.model
            case ScopeLevel.METER:
                return self.key == target.meter_id
