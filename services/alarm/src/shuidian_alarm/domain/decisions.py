"""What every rule decides: raise an alarm on a source, or clear it. At most one alarm is open per (source, type)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shuidian_alarm.domain.targets import Placement
from shuidian_shared.messages import AlarmSeverity


@dataclass(frozen=True)
class Raise:
    source_id: str
    alarm_type: str
    severity: AlarmSeverity
    message_zh: str
    message_en: str
    details: dict[str, str] = field(default_factory=dict)
    # Where the alarm sits when its source is no meter, gateway or account (a line-loss group); None: looked up.
    placement: Placement | None = None


@dataclass(frozen=True)
class Clear:
    source_id: str
    alarm_type: str


Decision = Raise | Clear
