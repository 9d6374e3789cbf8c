"""Work orders for device faults: a fault alarm opens one; maintenance staff assign, work and close it.

Status: open → assigned → in_progress → resolved → closed (closing needs a cause; any open order may be
closed directly, e.g. as a duplicate or a false alarm). Mean time to repair runs from opening to resolution.
"""

from __future__ import annotations

from typing import Final

from shuidian_alarm.errors import InvalidTransition

# Alarm types that mean a device needs a person on site.
FAULT_TYPES: Final = frozenset(
    {
        "meter_offline",
        "gateway_offline",
        "comm_errors",
        "tamper",
        "battery_low",
        "clock_drift",
        "supply_mismatch",
        "command_failed",
        "electric_leakage",
    }
)
_NEXT: Final = {
    "open": {"assigned", "closed"},
    "assigned": {"assigned", "in_progress", "resolved", "closed"},
    "in_progress": {"resolved", "closed"},
    "resolved": {"closed", "in_progress"},  # reopened when the fix did not hold
    "closed": set(),
}


def plan_update(
    current: str,
    current_assignee: str | None,
    *,
    status: str | None,
    assignee: str | None,
    note: str | None,
    closing_cause: str | None,
) -> tuple[str, list[str]]:
    """The status a work order moves to and the journal entries that record it, or InvalidTransition saying why not."""
    target = status or ("assigned" if assignee and current == "open" else current)
    if target != current and target not in _NEXT[current]:
        raise InvalidTransition(f"a work order cannot go from {current} to {target}")
    if current == "closed" and (assignee or closing_cause):
        raise InvalidTransition("a closed work order is not changed any more; add a note instead")
    if target == "assigned" and not (assignee or current_assignee):
        raise InvalidTransition("assigning needs an assignee")
    if target == "closed" and current != "closed" and not closing_cause:
        raise InvalidTransition("closing needs a closing cause")
    entries = [f"{current} → {target}"] if target != current else []
    entries += [f"指派给 · assigned to {assignee}"] if assignee else []
    entries += [note] if note else []
    return target, entries
