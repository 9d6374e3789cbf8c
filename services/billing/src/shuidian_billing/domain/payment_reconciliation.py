"""Daily reconciliation (对账) of a provider's bill against what the ledger booked, line by line (pure).

A line is keyed by what both sides know: the provider's transaction id for a payment, our refund
number (out_refund_no) for a refund. Every difference is one of

    missing  the provider settled it, the ledger has nothing (money received, never credited)
    extra    the ledger booked it, the provider's bill does not have it
    amount   both have it, with different amounts
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

ZERO = Decimal("0.00")


class Kind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class Line:
    """One payment or refund, as the provider's bill or the ledger has it."""

    kind: Kind
    key: str  # provider transaction id (payment) or out_refund_no (refund)
    order_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Difference:
    problem: str  # missing, extra or amount
    kind: Kind
    key: str
    order_id: str
    settled: Decimal | None  # the provider's amount
    booked: Decimal | None  # the ledger's amount


@dataclass(frozen=True, slots=True)
class Report:
    settled_payments: Decimal
    settled_refunds: Decimal
    booked_payments: Decimal
    booked_refunds: Decimal
    lines: int
    differences: tuple[Difference, ...]

    @property
    def balanced(self) -> bool:
        return not self.differences


def reconcile(settled: Iterable[Line], booked: Iterable[Line]) -> Report:
    """Match the provider's lines against the ledger's: every line on one side only, or with another amount,
    is a difference. A key that appears twice on one side is summed (a bill may split a refund)."""
    theirs = _by_key(settled)
    ours = _by_key(booked)
    differences = []
    for key, line in sorted(theirs.items()):
        mine = ours.get(key)
        if mine is None:
            differences.append(Difference("missing", line.kind, line.key, line.order_id, line.amount, None))
        elif mine.amount != line.amount:
            differences.append(Difference("amount", line.kind, line.key, line.order_id, line.amount, mine.amount))
    for key, line in sorted(ours.items()):
        if key not in theirs:
            differences.append(Difference("extra", line.kind, line.key, line.order_id, None, line.amount))
    return Report(
        settled_payments=_total(theirs.values(), Kind.PAYMENT),
        settled_refunds=_total(theirs.values(), Kind.REFUND),
        booked_payments=_total(ours.values(), Kind.PAYMENT),
        booked_refunds=_total(ours.values(), Kind.REFUND),
        lines=len(theirs),
        differences=tuple(differences),
    )


def _by_key(lines: Iterable[Line]) -> dict[tuple[Kind, str], Line]:
    merged: dict[tuple[Kind, str], Line] = {}
    for line in lines:
        seen = merged.get((line.kind, line.key))
        merged[(line.kind, line.key)] = (
            line if seen is None else Line(line.kind, line.key, line.order_id, seen.amount + line.amount)
        )
    return merged


def _total(lines: Iterable[Line], kind: Kind) -> Decimal:
    return sum((line.amount for line in lines if line.kind is kind), ZERO)
