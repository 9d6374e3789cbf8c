"""Usage history: how the billing transaction books quantity and exact cost per meter and hour, and
the reads of it — a meter's or a household's usage per local hour, day or month, and a meter's last
billed register values.

Booking rule (docs/billing.md, "Usage history"): a priced piece's quantity and cost are spread over
the UTC hours its span covers, pro rata by time (`shuidian_shared.proration`, the rule pricing splits
a gap with), so a gap's usage lands in the hours it was used in, not in the hour of the reading that
closed it. The ledger's accruals keep their own hour (the posting hour); only the history is spread.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import statements
from shuidian_billing.adapters.sql import OWNERS_SQL
from shuidian_billing.errors import NotFound
from shuidian_shared.proration import hourly_shares

Granularity = Literal["hour", "day", "month"]

# usage_hourly.cost is numeric(24, 10): a cost is spread in steps of that scale so the stored parts
# still sum to the cost; quantities (numeric(20, 6)) use the shared 1e-6 step.
COST_QUANTUM = Decimal("1E-10")
# The spread usage rows the billing transaction writes (parameter name and SQL type, in tuple order).
USAGE_COLUMNS = (("um", "text"), ("uh", "timestamptz"), ("uu", "text"), ("uq", "numeric"), ("uc", "numeric"))
# The UTC hour of an instant in SQL, whatever the session's time zone (what `_hour_of` is in Python).
HOUR_SQL = "date_bin('1 hour', {0}, TIMESTAMPTZ '2000-01-01 00:00+00')"
_HOUR = timedelta(hours=1)

UsagePiece = tuple[str, str, datetime | None, datetime | None, Decimal, Decimal]
"""(meter, utility, span start, span end, quantity, cost) of one charge row."""


def spread_over_hours(pieces: Iterable[UsagePiece]) -> list[tuple[str, datetime, str, Decimal, Decimal]]:
    """Usage rows (meter, hour, utility, quantity, cost) of the pieces whose span runs past the end of the
    UTC hour it starts in, spread over the hours it spans by time. Every other piece — inside one hour,
    ending on the hour, or without a span — is booked by SQL in the hour its span starts in (or its own
    hour column), which is cheaper: that is nearly every piece at a normal reading rate."""
    spread: list[tuple[str, datetime, str, Decimal, Decimal]] = []
    for meter, utility, start, end, quantity, cost in pieces:
        if start is None or end is None:
            continue
        span = end - start
        if span < _HOUR and (start.hour == end.hour or not (end.minute or end.second or end.microsecond)):
            continue  # the common case, decided without building a datetime
        if end <= _hour_of(start) + _HOUR:
            continue
        quantities = hourly_shares(quantity, start, end)
        costs = hourly_shares(cost, start, end, COST_QUANTUM)
        spread.extend(
            (meter, hour, utility, part, cost_part)
            for (hour, part), (_, cost_part) in zip(quantities, costs, strict=True)
        )
    return spread


def _hour_of(at: datetime) -> datetime:
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


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


# The meters a household ever paid for, found through the account's and its leases' indexes (a tenant's
# chart must not scan every binding), then their owner periods that are the household's.
_HOUSEHOLD_METERS = """b.meter_id IN (
    SELECT meter_id FROM billing.meter_bindings WHERE account_id = :acc
    UNION SELECT mb.meter_id FROM billing.leases le JOIN billing.meter_bindings mb ON mb.room_id = le.room_id
    WHERE le.account_id = :acc
) AND coalesce(b.account_id, l.account_id) = :acc"""
# A household's hours: every hour of usage history of a meter while the household paid for it, an
# hour counting for the owner period that covers its start (owner periods of a meter partition time,
# so no hour counts for two households).
_HOUSEHOLD_SQL = f"""
WITH owned AS ({OWNERS_SQL.format(where=_HOUSEHOLD_METERS)})
SELECT date_trunc(:g, u.hour AT TIME ZONE :tz) AS bucket, u.utility, sum(u.quantity) AS quantity,
       sum(u.cost) AS cost, count(DISTINCT u.hour) AS hours
FROM owned o
JOIN billing.usage_hourly u ON u.meter_id = o.meter_id
     AND u.hour >= CAST(:s AS timestamptz) AND u.hour < CAST(:e AS timestamptz)  -- the index range
     AND u.hour >= greatest(CAST(:s AS timestamptz), o.valid_from)
     AND u.hour < least(CAST(:e AS timestamptz), o.valid_to)
GROUP BY 1, 2 ORDER BY 1, 2
"""


async def household_usage(
    engine: AsyncEngine, account_id: str, granularity: Granularity, start: datetime, end: datetime, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """A household's usage and exact cost per utility and local bucket: the usage history of the meters
    it paid for, over the hours it paid for them — it follows the household across meter replacements
    and moves, and books a gap's usage in the hours it spans."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(_HOUSEHOLD_SQL), {"g": granularity, "tz": str(tz), "acc": account_id, "s": start, "e": end}
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
