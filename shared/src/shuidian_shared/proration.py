"""Time-proration: a quantity measured over an interval, split exactly between its parts.

A cumulative meter says how much was used between two readings, not when. Billing prices that
quantity, and books it in usage history, as if it were used at an even rate over the interval:
each part of the interval gets the share of its duration (whole microseconds). `apportion` is the
one splitting rule: the parts always sum exactly to the whole, each cut at a fixed step
(`PRORATA_QUANTUM`, 1e-6 units, the scale of every stored quantity). `hourly_shares` applies it to
the UTC hours an interval spans (China's offset is a whole number of hours, so these are local
hours too). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal

PRORATA_QUANTUM = Decimal("0.000001")
"""Pro-rata parts of a quantity are cut at this step (1e-6 units); the last part takes the exact rest."""

# Wide enough that products and quotients of realistic quantities and microsecond weights never
# round before the explicit quantize.
_WIDE = Context(prec=60)
_ONE_MICROSECOND = timedelta(microseconds=1)
_HOUR = timedelta(hours=1)


def microseconds(span: timedelta) -> int:
    """Whole microseconds in `span`: the integer weight of a duration in a pro-rata split."""
    return span // _ONE_MICROSECOND


def apportion(
    total: Decimal, weights: Sequence[int | Decimal], quantum: Decimal = PRORATA_QUANTUM
) -> tuple[Decimal, ...]:
    """Split `total` pro rata to non-negative `weights` so the parts sum exactly to `total`.

    Cumulative rounding: part i is Q(total·W_i/W) − Q(total·W_{i−1}/W), where W_i is the running
    weight and Q rounds half-even to `quantum`; the final cut is `total` itself. Parts are
    therefore monotone, deterministic, exactly zero for zero weights and never drift.
    Raises ValueError for no weights, a negative weight or weights that are all zero.
    """
    if not weights:
        raise ValueError("apportion needs at least one weight")
    if any(weight < 0 for weight in weights):
        raise ValueError("apportion weights must be non-negative")
    whole = Decimal(0)
    for weight in weights:
        whole = _WIDE.add(whole, Decimal(weight))
    if whole == 0:
        raise ValueError("apportion weights must not all be zero")
    parts: list[Decimal] = []
    running = Decimal(0)
    previous_cut = Decimal(0)
    for weight in weights:
        running = _WIDE.add(running, Decimal(weight))
        if running == whole:
            cut = total
        else:
            share = _WIDE.divide(_WIDE.multiply(total, running), whole)
            cut = share.quantize(quantum, rounding=ROUND_HALF_EVEN, context=_WIDE)
        parts.append(_WIDE.subtract(cut, previous_cut))
        previous_cut = cut
    return tuple(parts)


def hour_of(at: datetime) -> datetime:
    """The start of the UTC hour `at` falls in (aware datetimes only)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware: {at!r}")
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_spans(start: datetime, end: datetime) -> list[tuple[datetime, datetime, datetime]]:
    """The UTC hours [start, end) touches, each as (hour start, part start, part end); an empty interval
    is the single hour of `end` with an empty part."""
    if end < start:
        raise ValueError("interval ends before it starts")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start == end:
        return [(hour_of(end), end, end)]
    spans: list[tuple[datetime, datetime, datetime]] = []
    hour = hour_of(start)
    while hour < end:
        following = hour + _HOUR
        spans.append((hour, max(start, hour), min(end, following)))
        hour = following
    return spans


def hourly_shares(
    quantity: Decimal, start: datetime, end: datetime, quantum: Decimal = PRORATA_QUANTUM
) -> list[tuple[datetime, Decimal]]:
    """`quantity` used evenly over [start, end), as (UTC hour start, part) per hour it spans; the parts
    sum exactly to `quantity`. An empty interval books everything in the hour of `end`.

    Example: 3 kWh over 09:40–11:10 → 09:00 0.666667, 10:00 2.000000, 11:00 0.333333.
    """
    spans = hour_spans(start, end)
    if len(spans) == 1:
        return [(spans[0][0], quantity)]
    parts = apportion(quantity, [microseconds(high - low) for _, low, high in spans], quantum)
    return [(hour, part) for (hour, _, _), part in zip(spans, parts, strict=True)]
