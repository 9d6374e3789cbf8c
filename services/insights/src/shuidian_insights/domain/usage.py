"""Which register measures a utility's use, and calendar helpers on local dates."""

from __future__ import annotations

from datetime import date, timedelta

USAGE_REGISTERS = {"electricity": "energy_active_import_total", "water": "water_volume_total"}


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return month_start(month_start(day) + timedelta(days=32))


def months_between(first: date, last: date) -> list[date]:
    """Every month start in [first, last]."""
    months = []
    current = first if first.day == 1 else next_month(first)
    while current <= last:
        months.append(current)
        current = next_month(current)
    return months


def month_key(day: date) -> str:
    return f"{day:%Y-%m}"


def previous_months(today: date, count: int) -> list[str]:
    """The last `count` whole months before the one containing `today`, oldest first."""
    months: list[str] = []
    current = month_start(today)
    for _ in range(count):
        current = month_start(current - timedelta(days=1))
        months.append(month_key(current))
    return list(reversed(months))
