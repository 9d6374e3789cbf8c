"""Scheduled operations as rules: what a schedule runs, and which of its occurrences is due at a given instant."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo

from shuidian_shared.messages import CommandKind


@dataclass(frozen=True)
class ScheduleSpec:
    """What to run where and when: daily at `at_local`, or once at `run_at` (exactly one of them)."""

    name: str
    kind: CommandKind
    building_id: str | None = None
    meters: tuple[str, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    ttl_seconds: int | None = None
    at_local: time | None = None
    run_at: datetime | None = None
    command_id: uuid.UUID | None = None  # a one-shot's command id, and the idempotency key of its creation

    def __post_init__(self) -> None:
        if (self.at_local is None) == (self.run_at is None):
            raise ValueError("a schedule runs daily (at_local) or once (run_at)")


def latest_occurrence(now: datetime, at_local: time, tz: tzinfo) -> datetime:
    """The most recent instant at or before `now` when the local clock read `at_local` (aware UTC in, aware out)."""
    local = now.astimezone(tz)
    candidate = datetime.combine(local.date(), at_local, tzinfo=tz)
    if candidate > local:
        candidate = datetime.combine(local.date() - timedelta(days=1), at_local, tzinfo=tz)
    return candidate.astimezone(now.tzinfo)


def due_occurrence(
    now: datetime, *, run_at: datetime | None, at_local: time | None, last_occurrence: datetime | None, tz: tzinfo
) -> datetime | None:
    """The occurrence a schedule owes at `now` (its one-shot instant, or its latest daily one), or None when that
    occurrence has already run. The caller skips, with a warning, one older than its grace."""
    if run_at is not None:
        occurrence = run_at
    else:
        if at_local is None:
            raise ValueError("a schedule runs daily (at_local) or once (run_at)")
        occurrence = latest_occurrence(now, at_local, tz)
    if last_occurrence is not None and last_occurrence >= occurrence:
        return None
    return occurrence
