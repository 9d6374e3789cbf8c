"""Fixed monthly fees pro-rated by leased days, and each household's weight in the month's 公摊 (no I/O).

A lease's share of a monthly fee is computed exactly (to `FEE_QUANTUM`) and posted in whole fen
rounded toward zero, the cut-off remainder carried to the household's next fee of the component —
the ledger's one rounding rule (`shuidian_shared.money.split_cents`).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from shuidian_billing.domain import BillingDomainError, tariffs
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_shared.money import split_cents

FEE_QUANTUM = Decimal("0.0000000001")
"""A pro-rated fee is computed to this step (the scale of the ledger's exact amounts) before the fen cut."""


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def leased_days(move_in: date, move_out: date | None, year: int, month: int) -> int:
    """Local days of the month inside the lease [move_in, move_out)."""
    first = date(year, month, 1)
    following = date(year + month // 12, month % 12 + 1, 1)
    end = following if move_out is None else min(move_out, following)
    return max((end - max(move_in, first)).days, 0)


@dataclass(frozen=True, slots=True)
class ProratedFee:
    share: Decimal  # amount_per_month × days / days_in_month, to FEE_QUANTUM (half-even)
    posted: Decimal  # share + carried in, whole fen rounded toward zero
    remainder: Decimal  # what was cut off: carried to the household's next fee of the component


def prorate_fee(amount_per_month: Decimal, days: int, month_days: int, carried: Decimal = Decimal(0)) -> ProratedFee:
    """A monthly fee for `days` of a `month_days`-day month, posted by the ledger's rounding rule."""
    if not 28 <= month_days <= 31 or not 0 <= days <= month_days:
        raise BillingDomainError(f"{days} leased days in a {month_days}-day month")
    share = (amount_per_month * days / month_days).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
    posted, remainder = split_cents(share + carried)
    return ProratedFee(share, posted, remainder)


def month_start(year: int, month: int) -> datetime:
    """UTC instant of the local (Asia/Shanghai) start of a month."""
    return datetime(year, month, 1, tzinfo=CHINA_STANDARD_TIME).astimezone(UTC)


def shared_area_weights(
    leases: Sequence[tuple[str, Decimal, date, date | None]], basis: tariffs.SharedBasis, year: int, month: int
) -> dict[str, Decimal]:
    """Each household's weight in the month's 公摊: room area (or 1, by `basis`) × local days leased.

    `leases` are (account, room area, move_in, move_out); two leases of one account add up, so two
    households one after the other in a room share its area by their days, and a household leased
    2 of 30 days weighs 2/30 of a whole month's.
    """
    weights: dict[str, Decimal] = {}
    for account, area, moved_in, moved_out in leases:
        days = leased_days(moved_in, moved_out, year, month)
        if days:
            per_day = Decimal(area) if basis is tariffs.SharedBasis.AREA else Decimal(1)
            weights[account] = weights.get(account, Decimal(0)) + per_day * days
    return weights
