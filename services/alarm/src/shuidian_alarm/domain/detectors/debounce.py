"""Debounce: the duration and hysteresis every sampled condition shares.

Evidence about a condition arrives with each observation; an alarm goes up once the evidence has pointed to it
for `raise_after` and comes down once it has pointed back for `clear_after`. A gap longer than `max_gap`
restarts a pending duration, so nothing is raised or cleared from data nobody saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Literal

from shuidian_alarm.domain.decisions import Clear, Decision, Raise


class Evidence(Enum):
    TRIGGER = "trigger"  # the alarm condition holds
    RELEASE = "release"  # back inside the band by the margin
    HOLD = "hold"  # inside the hysteresis band: breaks a pending raise or clear, decides nothing
    NONE = "none"  # says nothing about the condition


@dataclass(frozen=True, kw_only=True)
class DebounceState:
    """Whether an alarm is up, since when the evidence has pointed the other way, and the newest evidence."""

    kind: Literal["debounce"] = "debounce"
    active: bool = False
    since: datetime | None = None
    last_at: datetime | None = None


def debounce(
    state: DebounceState,
    at: datetime,
    evidence: Evidence,
    raise_after: timedelta,
    clear_after: timedelta,
    max_gap: timedelta | None,
    start: datetime | None = None,
) -> DebounceState:
    # `start` is when evidence covering a period (an hour of consumption) began; `at` when it ended.
    if evidence is Evidence.NONE:
        return state
    toward = Evidence.RELEASE if state.active else Evidence.TRIGGER
    if evidence is not toward:
        return settled(state.active, at)
    since = state.since
    if since is not None and max_gap is not None and state.last_at is not None and at - state.last_at > max_gap:
        since = None
    since = (start or at) if since is None else since
    if at - since >= (clear_after if state.active else raise_after):
        return DebounceState(active=not state.active, since=None, last_at=at)
    return DebounceState(active=state.active, since=since, last_at=at)


@lru_cache(maxsize=8)
def settled(active: bool, at: datetime) -> DebounceState:
    # Nothing pending: the state of most rules after most readings. States are immutable values, so every
    # rule a reading left settled shares one (the service then builds and encodes it once per reading).
    return DebounceState(active=active, since=None, last_at=at)


def edge(
    was_active: bool, active: bool, raised: Callable[[], Raise], source_id: str, alarm_type: str
) -> list[Decision]:
    if active and not was_active:
        return [raised()]
    if was_active and not active:
        return [Clear(source_id, alarm_type)]
    return []
