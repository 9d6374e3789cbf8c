"""Retroactive price decisions (调价追溯): re-price what households were charged over a closed period under a
new version, and the difference each household owes or is owed (no I/O).

The caller hands every charged meter-hour of the plan and utility from the start of the tier period that
contains the correction's start (so tier usage before the period counts), and says from when hours are
corrected. Each household's difference is exact; the adjustment posted is that difference rounded toward
zero to the fen — the ledger's one rounding rule — and what is under a fen is not charged or refunded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import ROUND_DOWN, Decimal

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME, CalendarPeriod, period_start
from shuidian_billing.domain.tariffs import TariffVersion, Tiered, TimeOfUse, price_interval
from shuidian_shared.money import CENT

ZERO = Decimal(0)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ChargedHour:
    """What one household was charged for one meter-hour under the plan being corrected.

    `quantity` is counted once (not once per component); `rate_quantities` are the time-of-use rates'
    quantities when the version that priced it had a time-of-use component.
    """

    account_id: str
    meter_id: str
    hour: datetime
    start: datetime
    end: datetime
    quantity: Decimal
    amount: Decimal
    household_size: int = 1
    rate_quantities: Mapping[str, Decimal] | None = None


@dataclass(slots=True)
class HouseholdCorrection:
    """One household's re-pricing: what it paid, what it would have paid, and the adjustment to post."""

    account_id: str
    quantity: Decimal = ZERO
    old_amount: Decimal = ZERO
    new_amount: Decimal = ZERO
    hours: int = 0
    meters: set[str] = field(default_factory=set)

    @property
    def difference(self) -> Decimal:
        """Exact: positive when the household was charged too little."""
        return self.new_amount - self.old_amount

    @property
    def posted(self) -> Decimal:
        """The adjustment in whole fen, rounded toward zero (positive: the household is charged more)."""
        return self.difference.quantize(CENT, rounding=ROUND_DOWN)


def reprice(
    hours: Sequence[ChargedHour],
    version: TariffVersion,
    correct_from: datetime,
    tz: tzinfo = CHINA_STANDARD_TIME,
) -> dict[str, HouseholdCorrection]:
    """Each household's correction for the hours at or after `correct_from`, priced under `version`.

    Hours before `correct_from` only count towards tier usage. `version` must be in force from before
    the first hour (a retroactive version is a decision about the past).
    """
    if hours and version.effective_from > min(h.start for h in hours):
        raise BillingDomainError("the correcting version must be in force over the whole period")
    period = next((c.period for c in version.components if isinstance(c, Tiered)), CalendarPeriod.MONTH)
    tou = next((c for c in version.components if isinstance(c, TimeOfUse)), None)
    labels = {rate.label for rate in tou.rates} if tou is not None else set()
    usage: dict[tuple[str, datetime], Decimal] = {}
    out: dict[str, HouseholdCorrection] = {}
    for h in sorted(hours, key=lambda h: (h.start, h.hour, h.account_id, h.meter_id)):
        key = (h.account_id, period_start(period, h.start, tz))
        segments = h.rate_quantities
        if segments is None or not set(segments) <= labels or sum(segments.values(), ZERO) != h.quantity:
            segments = None  # re-split by time: the new schedule's rates, or no time-of-use at all
        priced = price_interval(
            [version],
            version.utility,
            h.quantity,
            h.start,
            h.end,
            usage.get(key, ZERO),
            h.household_size,
            tz,
            segment_quantities=segments,
        )
        # The usage after is that of the period of the interval's last piece (which ends at `end`).
        last = period_start(period, h.end - _TICK, tz) if h.end > h.start else key[1]
        usage[(h.account_id, last)] = priced.usage_in_period_after
        if h.hour < correct_from:
            continue
        found = out.setdefault(h.account_id, HouseholdCorrection(h.account_id))
        found.quantity += h.quantity
        found.old_amount += h.amount
        found.new_amount += priced.total
        found.hours += 1
        found.meters.add(h.meter_id)
    return out
