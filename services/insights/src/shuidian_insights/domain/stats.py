"""Small exact statistics on Decimals (percentiles by linear interpolation, medians)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal


def percentile(ordered: Sequence[Decimal], p: Decimal) -> Decimal:
    """The p-th percentile (0..100) of an ascending, non-empty sequence, linearly interpolated."""
    if not ordered:
        raise ValueError("percentile of nothing")
    if not Decimal(0) <= p <= Decimal(100):
        raise ValueError("p must be within 0..100")
    position = (len(ordered) - 1) * p / 100
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def median(values: Sequence[Decimal]) -> Decimal:
    return percentile(sorted(values), Decimal(50))


def pct_more(value: Decimal, reference: Decimal) -> Decimal | None:
    """How many per cent `value` is above `reference` (negative: below); None without a reference."""
    if reference <= 0:
        return None
    return ((value - reference) * 100 / reference).quantize(Decimal("1"))
