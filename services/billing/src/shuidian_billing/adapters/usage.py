"""Reads of usage history: a meter's or a household's quantity and exact cost per local hour, day or
month, and a meter's last billed register values."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import statements
from shuidian_billing.errors import NotFound

Granularity = Literal["hour", "day", "month"]


def _buckets(rows: Iterable[Any], tz: ZoneInfo) -> list[dict[str, Any]]:
    """One usage bucket per row of (bucket, utility, quantity, cost, hours)."""
    return [
        {
            "start": row.bucket.replace(tzinfo=tz).isoformat(),
            "utility": row.utility,
            "quantity": row.quantity,
            "unit": statements.UNITS.get(row.utility, ""),
            "cost": row.cost,
            "hours": row.hours,
        }
        for row in rows
    ]


async def usage_history(
    engine: AsyncEngine, meter_id: str, granularity: Granularity, start: datetime, end: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Quantity and exact cost per local hour, day or month: one indexed range query on (meter_id, hour)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT date_trunc(:g, hour AT TIME ZONE :tz) AS bucket, min(utility) AS utility, "
                "sum(quantity) AS quantity, sum(cost) AS cost, count(*) AS hours "
                "FROM billing.usage_hourly WHERE meter_id = :m AND hour >= :s AND hour < :e GROUP BY 1 ORDER BY 1"
            ),
            {"g": granularity, "tz": str(tz), "m": meter_id, "s": start, "e": end},
        )
        return _buckets(rows, tz)


async def household_usage(
    engine: AsyncEngine, account_id: str, granularity: Granularity, start: datetime, end: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """A household's usage and exact cost per utility and local bucket, from the charge decomposition:
    it follows the household across meter replacements and moves (index on (account_id, hour))."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                # Each usage component prices the whole quantity, so one component's lines give the
                # quantity, while the cost is the sum over every component.
                "WITH per_component AS (SELECT c.meter_id, c.hour, t.utility, c.component, sum(c.quantity) AS q, "
                "  sum(c.amount) AS a FROM billing.charge_lines c JOIN billing.tariffs t USING (tariff_id) "
                "  WHERE c.account_id = :acc AND c.hour >= :s AND c.hour < :e GROUP BY 1, 2, 3, 4), "
                "per_hour AS (SELECT meter_id, hour, utility, max(q) AS q, sum(a) AS a FROM per_component GROUP BY 1, 2, 3) "
                "SELECT date_trunc(:g, hour AT TIME ZONE :tz) AS bucket, utility, sum(q) AS quantity, sum(a) AS cost, "
                "count(DISTINCT hour) AS hours FROM per_hour GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            {"g": granularity, "tz": str(tz), "acc": account_id, "s": start, "e": end},
        )
        return _buckets(rows, tz)


async def latest_reading(engine: AsyncEngine, meter_id: str) -> dict[str, Any]:
    """The last register values billed for a meter (its watermarks); NotFound before the first."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT register, value, sampled_at FROM billing.watermarks WHERE meter_id = :m ORDER BY register"
                ),
                {"m": meter_id},
            )
        ).all()
    if not rows:
        raise NotFound(f"表计 {meter_id} 尚无读数 · no reading billed for meter {meter_id}")
    return {
        "meter_id": meter_id,
        "sampled_at": max(r.sampled_at for r in rows),
        "registers": {r.register: r.value for r in rows},
    }
