"""Double-entry posting rules, hourly charge accrual and prepaid balance levels (no I/O).

Sign convention: a line's amount is the change it makes to that account's balance, credit
positive. A household account's balance is therefore its prepaid credit (negative = owed) and
revenue accounts grow positive; the cash and clearing accounts that hold tenants' money carry
the matching negative balances. Every posting sums to exactly zero, in whole fen.

Account names:
    household:<account_id>[:electricity|:water]   paid credit (the utility suffix only when a
                                                  household keeps separate balances)
    household:<account_id>[:<utility>]:subsidy    subsidy credit, kept apart and used first
    revenue:electricity, revenue:water, revenue:fees
    cash:counter, clearing:bank, clearing:wechat, clearing:alipay, clearing:sandbox
    subsidy:fund
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.meters import hour_start, open_hour
from shuidian_billing.domain.periods import as_utc
from shuidian_shared.messages import BalanceEventKind, BalanceLevel, Utility
from shuidian_shared.money import CENT, Money, split_cents

ZERO = Decimal(0)
SUBSIDY_FUND = "subsidy:fund"
FEE_REVENUE = "revenue:fees"
_EMPTY_META: Mapping[str, str] = MappingProxyType({})


class UnbalancedPosting(BillingDomainError):
    """A posting whose lines do not sum to exactly zero, or are not whole fen."""


class PostingKind(StrEnum):
    """Why money moved."""

    CONSUMPTION_CHARGE = "consumption"
    TOPUP = "topup"
    SUBSIDY_CREDIT = "subsidy_credit"
    REFUND = "refund"
    REVERSAL = "reversal"
    FIXED_FEE = "fixed_fee"
    SHARED_AREA = "shared_area"


class TopupChannel(StrEnum):
    """Where a top-up's money came in (and where a refund goes out)."""

    CASH = "cash"
    BANK = "bank"
    WECHAT = "wechat"
    ALIPAY = "alipay"
    SANDBOX = "sandbox"


_CHANNEL_ACCOUNTS = {
    TopupChannel.CASH: "cash:counter",
    TopupChannel.BANK: "clearing:bank",
    TopupChannel.WECHAT: "clearing:wechat",
    TopupChannel.ALIPAY: "clearing:alipay",
    TopupChannel.SANDBOX: "clearing:sandbox",
}


def household_account(account_id: str, utility: Utility | None = None) -> str:
    """The paid-credit account of a household (per utility when balances are separate)."""
    if not account_id or ":" in account_id or any(ch.isspace() for ch in account_id):
        raise BillingDomainError(f"invalid account id: {account_id!r}")
    return f"household:{account_id}" if utility is None else f"household:{account_id}:{utility}"


def subsidy_account(household: str) -> str:
    """The subsidy-credit account that sits beside a household's paid-credit account."""
    return f"{household}:subsidy"


def revenue_account(utility: Utility) -> str:
    """The revenue account of a utility's consumption charges."""
    return f"revenue:{utility}"


def channel_account(channel: TopupChannel) -> str:
    """The cash or clearing account of a payment channel."""
    return _CHANNEL_ACCOUNTS[channel]


@dataclass(frozen=True, slots=True)
class PostingLine:
    """One account's share of a posting, in whole fen (credit positive)."""

    account: str
    amount: Money


@dataclass(frozen=True, slots=True)
class Posting:
    """A balanced, append-only ledger transaction; the constructor refuses anything else."""

    txn_id: str
    kind: PostingKind
    lines: tuple[PostingLine, ...]
    occurred_at: datetime
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY_META)
    reverses: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "occurred_at", as_utc(self.occurred_at))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        if not self.txn_id:
            raise BillingDomainError("a posting needs a transaction id")
        if not self.lines:
            raise UnbalancedPosting("a posting needs lines")
        accounts = [line.account for line in self.lines]
        if len(set(accounts)) != len(accounts):
            raise UnbalancedPosting("each account appears at most once in a posting")
        for line in self.lines:
            if not line.account or any(ch.isspace() for ch in line.account):
                raise BillingDomainError(f"invalid account name: {line.account!r}")
            if line.amount == 0 or line.amount != line.amount.quantize(CENT):
                raise UnbalancedPosting(f"line amounts must be non-zero whole fen: {line.amount}")
        if sum((line.amount for line in self.lines), ZERO) != 0:
            raise UnbalancedPosting(f"posting {self.txn_id} does not balance")
        if (self.kind is PostingKind.REVERSAL) != (self.reverses is not None):
            raise BillingDomainError("exactly the reversal postings reference an original")

    def amount_for(self, account: str) -> Decimal:
        """The net amount this posting puts on `account` (zero if untouched)."""
        return sum((line.amount for line in self.lines if line.account == account), ZERO)


@dataclass(frozen=True, slots=True)
class ChargeSplit:
    """How a charge is covered: subsidy credit first, the rest from paid credit."""

    from_subsidy: Decimal
    from_paid: Decimal


def split_charge(charge: Decimal, subsidy_balance: Decimal) -> ChargeSplit:
    """Cover `charge` from subsidy credit first and the rest from paid credit.

    Subsidy is never overdrawn; any shortfall falls on the paid balance, which may go negative
    because consumption is a fact. The paid balance therefore does not change the split.
    """
    if charge < 0:
        raise BillingDomainError("a charge cannot be negative")
    from_subsidy = min(charge, max(subsidy_balance, ZERO))
    return ChargeSplit(from_subsidy, charge - from_subsidy)


def charge_posting(
    txn_id: str,
    *,
    household: str,
    revenue: str,
    amount: Decimal,
    occurred_at: datetime,
    subsidy_available: Decimal = ZERO,
    kind: PostingKind = PostingKind.CONSUMPTION_CHARGE,
    meta: Mapping[str, str] | None = None,
) -> Posting:
    """Charge a household `amount` (whole fen, > 0) to `revenue`, subsidy credit first."""
    if kind not in (PostingKind.CONSUMPTION_CHARGE, PostingKind.FIXED_FEE, PostingKind.SHARED_AREA):
        raise BillingDomainError(f"{kind} is not a charge")
    _require_positive(amount)
    split = split_charge(amount, subsidy_available)
    lines = _lines(
        (household, -split.from_paid),
        (subsidy_account(household), -split.from_subsidy),
        (revenue, amount),
    )
    return Posting(txn_id, kind, lines, occurred_at, meta or _EMPTY_META)


def topup_posting(
    txn_id: str,
    *,
    household: str,
    amount: Decimal,
    channel: TopupChannel,
    occurred_at: datetime,
    meta: Mapping[str, str] | None = None,
) -> Posting:
    """Credit a household's paid balance with money received on `channel`.

    `txn_id` is the idempotency key or provider transaction id, so a replayed callback maps to
    the same posting and the ledger's uniqueness on txn_id refuses the second credit.
    """
    _require_positive(amount)
    lines = _lines((household, amount), (channel_account(channel), -amount))
    return Posting(txn_id, PostingKind.TOPUP, lines, occurred_at, {"channel": channel, **(meta or {})})


def refund_posting(
    txn_id: str,
    *,
    household: str,
    amount: Decimal,
    channel: TopupChannel,
    occurred_at: datetime,
    operator: str,
    reason: str,
) -> Posting:
    """Pay paid credit back to a household through `channel`."""
    _require_positive(amount)
    _require_who_and_why(operator, reason)
    lines = _lines((household, -amount), (channel_account(channel), amount))
    meta = {"channel": channel, "operator": operator, "reason": reason}
    return Posting(txn_id, PostingKind.REFUND, lines, occurred_at, meta)


def subsidy_posting(
    txn_id: str,
    *,
    household: str,
    amount: Decimal,
    occurred_at: datetime,
    meta: Mapping[str, str] | None = None,
) -> Posting:
    """Credit a household's subsidy account from the subsidy fund."""
    _require_positive(amount)
    lines = _lines((subsidy_account(household), amount), (SUBSIDY_FUND, -amount))
    return Posting(txn_id, PostingKind.SUBSIDY_CREDIT, lines, occurred_at, meta or _EMPTY_META)


def reversal_of(
    posting: Posting, *, operator: str, reason: str, occurred_at: datetime, txn_id: str | None = None
) -> Posting:
    """The reversing entry (冲正) of `posting`: the same lines negated, referencing the original.

    The default txn_id is derived from the original's, so reversing twice is refused by the
    ledger's uniqueness on txn_id rather than cancelling twice.
    """
    _require_who_and_why(operator, reason)
    lines = tuple(PostingLine(line.account, -line.amount) for line in posting.lines)
    meta = {"operator": operator, "reason": reason, "original_kind": posting.kind}
    return Posting(
        txn_id or f"reversal:{posting.txn_id}",
        PostingKind.REVERSAL,
        lines,
        occurred_at,
        meta,
        reverses=posting.txn_id,
    )


def _lines(*pairs: tuple[str, Decimal]) -> tuple[PostingLine, ...]:
    # Zero lines carry no information and would only grow the ledger.
    return tuple(PostingLine(account, amount) for account, amount in pairs if amount)


def _require_positive(amount: Decimal) -> None:
    if amount <= 0 or amount != amount.quantize(CENT):
        raise BillingDomainError(f"amount must be positive whole fen: {amount}")


def _require_who_and_why(operator: str, reason: str) -> None:
    if not operator.strip() or not reason.strip():
        raise BillingDomainError("an operator and a reason are required")


class HourlyAccrual:
    """Accumulates exact charges per (charged account, meter, hour) and posts whole fen: the rule the
    ledger poster runs on every flush.

    A flushed hour posts its exact total plus the carried remainder, rounded toward zero to the
    fen (`split_cents`); the cut-off remainder is carried to that meter's next hour. So for any
    sequence of amounts, posted + carried == exact total, and a meter yields at most one
    posting per hour (≤ 24 a day) whatever the reading rate. An amount belongs to the hour its
    instant falls in, or to the meter's next open hour once that one was posted (`open_hour`).

    The charged account is a household's purse, or an estate's shared pool for a common meter
    (a pool has no subsidy). Postings come out ordered by meter, charged account and hour.
    """

    def __init__(
        self,
        carries: Mapping[tuple[str, str], Decimal] | None = None,
        flushed_through: Mapping[tuple[str, str], datetime] | None = None,
    ) -> None:
        self._revenues: dict[tuple[str, str], str] = {}
        self._carries: dict[tuple[str, str], Decimal] = dict(carries or {})
        self._flushed: dict[tuple[str, str], datetime] = {
            key: hour_start(at) for key, at in (flushed_through or {}).items()
        }
        self._hours: dict[tuple[str, str], dict[datetime, Decimal]] = {}

    def add(self, *, household: str, meter_id: str, revenue: str, at: datetime, amount: Decimal) -> None:
        """Accrue an exact (unrounded) charge for consumption at `at` (the end of what was priced)."""
        if amount < 0:
            raise BillingDomainError("an accrued charge cannot be negative")
        key = (household, meter_id)
        known = self._revenues.setdefault(key, revenue)
        if known != revenue:
            raise BillingDomainError(f"meter {meter_id} already accrues to {known}, not {revenue}")
        hour = open_hour(at, self._flushed.get(key))
        hours = self._hours.setdefault(key, {})
        hours[hour] = hours.get(hour, ZERO) + amount

    def flush(self, before: datetime, *, subsidy_available: Mapping[str, Decimal] | None = None) -> list[Posting]:
        """Post every accrued hour that began before `before` (pass an hour's start: the ended hours).

        `subsidy_available` maps a household account to its subsidy balance; it is drawn down
        across the postings of this flush so it is never spent twice.
        """
        cutoff = as_utc(before)
        subsidy = dict(subsidy_available or {})
        postings: list[Posting] = []
        for key in sorted(self._hours, key=lambda k: (k[1], k[0])):
            household, meter_id = key
            hours = self._hours[key]
            for hour in sorted(h for h in hours if h < cutoff):
                exact = hours.pop(hour)
                carried_in = self._carries.get(key, ZERO)
                posted, carried_out = split_cents(exact + carried_in)
                self._carries[key] = carried_out
                flushed = self._flushed.get(key)
                self._flushed[key] = hour if flushed is None else max(flushed, hour)
                if not posted:
                    continue
                available = subsidy.get(household, ZERO)
                postings.append(
                    charge_posting(
                        f"consumption:{meter_id}:{hour:%Y%m%dT%H}Z:{household}",
                        household=household,
                        revenue=self._revenues[key],
                        amount=posted,
                        occurred_at=hour,
                        subsidy_available=available,
                        meta={
                            "meter_id": meter_id,
                            "exact": str(exact),
                            "carried_in": str(carried_in),
                            "carried_out": str(carried_out),
                        },
                    )
                )
                subsidy[household] = available - split_charge(posted, available).from_subsidy
            if not hours:
                del self._hours[key]
        return postings

    def carry(self, household: str, meter_id: str) -> Decimal:
        """The sub-fen remainder waiting for the meter's next posted hour."""
        return self._carries.get((household, meter_id), ZERO)

    def pending(self, household: str, meter_id: str) -> Decimal:
        """Exact amounts accrued but not yet flushed for the meter."""
        return sum(self._hours.get((household, meter_id), {}).values(), ZERO)

    @property
    def carries(self) -> dict[tuple[str, str], Decimal]:
        """Every meter's carried remainder, to persist across restarts."""
        return dict(self._carries)

    @property
    def flushed_through(self) -> dict[tuple[str, str], datetime]:
        """Every meter's last posted hour, to persist across restarts."""
        return dict(self._flushed)


_SEVERITY = {BalanceLevel.OK: 0, BalanceLevel.LOW_1: 1, BalanceLevel.LOW_2: 2, BalanceLevel.EXHAUSTED: 3}
_ENTERED = {
    BalanceLevel.LOW_1: BalanceEventKind.LOW_1,
    BalanceLevel.LOW_2: BalanceEventKind.LOW_2,
    BalanceLevel.EXHAUSTED: BalanceEventKind.EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class BalanceThresholds:
    """Balance at or below `level1`/`level2` is low; at or below −grace_credit it is exhausted."""

    level1: Decimal
    level2: Decimal
    grace_credit: Decimal = ZERO

    def __post_init__(self) -> None:
        if self.grace_credit < 0:
            raise BillingDomainError("grace credit cannot be negative")
        if not self.level1 > self.level2 > -self.grace_credit:
            raise BillingDomainError("thresholds must satisfy level1 > level2 > −grace_credit")

    def level_of(self, balance: Decimal) -> BalanceLevel:
        """The level of `balance` without hysteresis."""
        if balance <= -self.grace_credit:
            return BalanceLevel.EXHAUSTED
        if balance <= self.level2:
            return BalanceLevel.LOW_2
        if balance <= self.level1:
            return BalanceLevel.LOW_1
        return BalanceLevel.OK


def classify_balance(
    balance: Decimal,
    previous_level: BalanceLevel | None,
    thresholds: BalanceThresholds,
    hysteresis: Decimal,
) -> BalanceLevel:
    """The balance level, worsening at once but improving only `hysteresis` past a threshold.

    A balance oscillating within `hysteresis` above a threshold therefore keeps its level.
    """
    if hysteresis < 0:
        raise BillingDomainError("hysteresis cannot be negative")
    raw = thresholds.level_of(balance)
    if previous_level is None or _SEVERITY[raw] >= _SEVERITY[previous_level]:
        return raw
    # Improving: judge as if the balance were `hysteresis` lower, but never worse than before.
    shifted = thresholds.level_of(balance - hysteresis)
    return shifted if _SEVERITY[shifted] < _SEVERITY[previous_level] else previous_level


def transition_events(previous_level: BalanceLevel | None, new_level: BalanceLevel) -> list[BalanceEventKind]:
    """Events for a level change: the level entered when worsening, 'restored' on leaving EXHAUSTED.

    Only the deepest level entered is reported (OK → EXHAUSTED gives just 'exhausted'), so one
    exhaustion yields one 'exhausted' and the restoration after it one 'restored'.
    """
    previous = previous_level or BalanceLevel.OK
    if _SEVERITY[new_level] > _SEVERITY[previous]:
        return [_ENTERED[new_level]]
    if previous is BalanceLevel.EXHAUSTED and new_level is not BalanceLevel.EXHAUSTED:
        return [BalanceEventKind.RESTORED]
    return []


def balance_of(account: str, postings: Iterable[Posting]) -> Decimal:
    """An account's balance: the sum of its ledger lines (invariant 2)."""
    return sum((posting.amount_for(account) for posting in postings), ZERO)
