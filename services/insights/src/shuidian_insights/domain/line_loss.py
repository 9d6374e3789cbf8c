"""Line loss (线损): a master meter against the sum of its sub-meters, judged only on complete data.

Caller contract: quantities are one period's use (a local day or month) per meter, None for a meter
without a complete period (no frozen value at its start or its end). Completeness is the share of the
group's meters, master included, with a complete period; a loss is stated (and can exceed the threshold)
only when the master is complete and completeness reaches the group's minimum, because a missing
sub-meter looks exactly like theft.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class LossJudgement:
    master_quantity: Decimal | None
    sub_quantity: Decimal
    completeness_pct: Decimal
    judged: bool
    loss_quantity: Decimal | None
    loss_pct: Decimal | None
    exceeded: bool


def judge(
    master: Decimal | None,
    subs: Mapping[str, Decimal | None],
    *,
    threshold_pct: Decimal,
    min_completeness_pct: Decimal,
) -> LossJudgement:
    known = [q for q in subs.values() if q is not None]
    meters = len(subs) + 1
    complete = len(known) + (master is not None)
    completeness = (Decimal(complete) * 100 / meters).quantize(Decimal("0.1"))
    sub_total = sum(known, ZERO)
    judged = master is not None and master > 0 and completeness >= min_completeness_pct
    if not judged or master is None:
        return LossJudgement(master, sub_total, completeness, False, None, None, False)
    loss = master - sub_total
    loss_pct = (loss * 100 / master).quantize(Decimal("0.01"))
    return LossJudgement(master, sub_total, completeness, True, loss, loss_pct, loss_pct > threshold_pct)
