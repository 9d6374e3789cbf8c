"""Who pays for a meter when, and the hour an amount accrues to (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shuidian_billing.domain.periods import apportion, microseconds
from shuidian_shared.messages import Utility

# The register each utility is billed on.
REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}
COMMON = "common:"  # owner id prefix of an estate's common meter (公摊); its pool is 'shared:<estate>'
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Owner:
    """Who pays for a meter over [valid_from, valid_to) (None = unbounded)."""

    account_id: str
    utility: Utility
    valid_from: datetime | None
    valid_to: datetime | None
    household_size: int

    def covers(self, at: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (self.valid_to is None or at < self.valid_to)


def is_common(account_id: str) -> bool:
    """Whether an owner id is an estate's common meter pool rather than a household."""
    return account_id.startswith(COMMON)


def common_pool(account_id: str) -> str:
    """The ledger account a common meter's charges are drawn from ('shared:<estate>')."""
    return "shared:" + account_id.removeprefix(COMMON)


def hour_start(at: datetime) -> datetime:
    """The UTC hour `at` falls in."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def open_hour(at: datetime, posted_through: datetime | None) -> datetime:
    """The hour an amount at `at` accrues to: its own, or the first after the last posted one (a posted hour is closed)."""
    hour = hour_start(at)
    return hour if posted_through is None or hour > posted_through else posted_through + _HOUR


def split_by_owner(
    periods: list[Owner], start: datetime, end: datetime, quantity: Decimal
) -> list[tuple[Owner | None, datetime, datetime, Decimal]]:
    """Split an interval's quantity between the owners of the meter pro rata by time; None = nobody."""
    if start == end:
        owner = next((o for o in periods if o.covers(end)), None)
        return [(owner, start, end, quantity)]
    spans: list[tuple[Owner | None, datetime, datetime]] = []
    cursor = start
    for owner in periods:
        low = max(start, owner.valid_from) if owner.valid_from else start
        high = min(end, owner.valid_to) if owner.valid_to else end
        if high <= low:
            continue
        if low > cursor:
            spans.append((None, cursor, low))
        spans.append((owner, low, high))
        cursor = max(cursor, high)
    if cursor < end:
        spans.append((None, cursor, end))
    if len(spans) == 1:
        return [(spans[0][0], start, end, quantity)]
    parts = apportion(quantity, [microseconds(high - low) for _, low, high in spans])
    return [(owner, low, high, part) for (owner, low, high), part in zip(spans, parts, strict=True)]
