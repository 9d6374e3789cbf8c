"""Posting rules, hourly accrual and balance levels with hysteresis."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.ledger import (
    SUBSIDY_FUND,
    BalanceThresholds,
    HourlyAccrual,
    Posting,
    PostingKind,
    PostingLine,
    TopupChannel,
    UnbalancedPosting,
    balance_of,
    channel_account,
    charge_posting,
    classify_balance,
    household_account,
    refund_posting,
    revenue_account,
    reversal_of,
    split_charge,
    subsidy_account,
    subsidy_posting,
    topup_posting,
    transition_events,
)
from shuidian_billing.domain.meters import open_hour
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_shared.messages import BalanceEventKind, BalanceLevel, Utility

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)
HH = household_account("42")
REVENUE = revenue_account(Utility.ELECTRICITY)


@pytest.mark.parametrize(
    ("account_id", "utility", "expected"),
    [
        ("42", None, "household:42"),
        ("42", Utility.ELECTRICITY, "household:42:electricity"),
        ("a-7", Utility.WATER, "household:a-7:water"),
    ],
)
def test_household_account_names(account_id: str, utility: Utility | None, expected: str) -> None:
    assert household_account(account_id, utility) == expected
    assert subsidy_account(expected) == expected + ":subsidy"


@pytest.mark.parametrize("bad", ["", "a:b", "a b"])
def test_household_account_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(BillingDomainError):
        household_account(bad)


@pytest.mark.parametrize(
    ("channel", "account"),
    [
        (TopupChannel.CASH, "cash:counter"),
        (TopupChannel.BANK, "clearing:bank"),
        (TopupChannel.WECHAT, "clearing:wechat"),
        (TopupChannel.ALIPAY, "clearing:alipay"),
        (TopupChannel.SANDBOX, "clearing:sandbox"),
    ],
)
def test_channel_accounts(channel: TopupChannel, account: str) -> None:
    assert channel_account(channel) == account


@pytest.mark.parametrize(
    "lines",
    [
        (),
        (PostingLine("a:x", D("1.00")),),
        (PostingLine("a:x", D("1.00")), PostingLine("b:y", D("-0.99"))),
        (PostingLine("a:x", D("1.001")), PostingLine("b:y", D("-1.001"))),
        (PostingLine("a:x", D("0")), PostingLine("b:y", D("0"))),
        (PostingLine("a:x", D("1")), PostingLine("a:x", D("-1"))),
        (PostingLine("a x", D("1")), PostingLine("b:y", D("-1"))),
    ],
)
def test_postings_that_do_not_balance_are_refused(lines: tuple[PostingLine, ...]) -> None:
    with pytest.raises(BillingDomainError):
        Posting("t1", PostingKind.TOPUP, lines, T0)


def test_unbalanced_is_a_domain_error() -> None:
    with pytest.raises(UnbalancedPosting):
        Posting("t1", PostingKind.TOPUP, (PostingLine("a:x", D(1)), PostingLine("b:y", D(-2))), T0)


def test_only_reversals_reference_an_original() -> None:
    lines = (PostingLine("a:x", D(1)), PostingLine("b:y", D(-1)))
    with pytest.raises(BillingDomainError):
        Posting("t1", PostingKind.TOPUP, lines, T0, reverses="t0")
    with pytest.raises(BillingDomainError):
        Posting("t1", PostingKind.REVERSAL, lines, T0)


@pytest.mark.parametrize(
    ("amount", "subsidy", "expected"),
    [
        ("10.00", "0", {HH: D("-10.00"), REVENUE: D("10.00")}),
        ("10.00", "3.50", {HH: D("-6.50"), subsidy_account(HH): D("-3.50"), REVENUE: D("10.00")}),
        ("10.00", "25", {subsidy_account(HH): D("-10.00"), REVENUE: D("10.00")}),
        ("10.00", "-2", {HH: D("-10.00"), REVENUE: D("10.00")}),
    ],
)
def test_charge_posting_uses_subsidy_first(amount: str, subsidy: str, expected: dict[str, Decimal]) -> None:
    posting = charge_posting(
        "c1", household=HH, revenue=REVENUE, amount=D(amount), occurred_at=T0, subsidy_available=D(subsidy)
    )
    assert {line.account: line.amount for line in posting.lines} == expected
    assert posting.kind is PostingKind.CONSUMPTION_CHARGE


@pytest.mark.parametrize(
    ("charge", "subsidy", "from_subsidy", "from_paid"),
    [("5", "0", "0", "5"), ("5", "2", "2", "3"), ("5", "9", "5", "0"), ("0", "9", "0", "0"), ("5", "-1", "0", "5")],
)
def test_split_charge(charge: str, subsidy: str, from_subsidy: str, from_paid: str) -> None:
    split = split_charge(D(charge), D(subsidy))
    assert (split.from_subsidy, split.from_paid) == (D(from_subsidy), D(from_paid))


@pytest.mark.parametrize("amount", ["0", "-1.00", "1.005"])
def test_helpers_refuse_non_positive_or_sub_fen_amounts(amount: str) -> None:
    with pytest.raises(BillingDomainError):
        topup_posting("t", household=HH, amount=D(amount), channel=TopupChannel.CASH, occurred_at=T0)
    with pytest.raises(BillingDomainError):
        charge_posting("c", household=HH, revenue=REVENUE, amount=D(amount), occurred_at=T0)


def test_charge_posting_refuses_non_charge_kinds() -> None:
    with pytest.raises(BillingDomainError):
        charge_posting("c", household=HH, revenue=REVENUE, amount=D(1), occurred_at=T0, kind=PostingKind.TOPUP)


def test_balance_is_the_sum_of_entries_through_a_life_cycle() -> None:
    ledger = [
        topup_posting("wx-1", household=HH, amount=D("100.00"), channel=TopupChannel.WECHAT, occurred_at=T0),
        subsidy_posting("s-1", household=HH, amount=D("20.00"), occurred_at=T0),
        charge_posting("c-1", household=HH, revenue=REVENUE, amount=D("25.00"), occurred_at=T0, subsidy_available=D("20.00")),
        charge_posting(
            "f-1", household=HH, revenue="revenue:fees", amount=D("5.00"), occurred_at=T0, kind=PostingKind.FIXED_FEE
        ),
        refund_posting(
            "r-1", household=HH, amount=D("10.00"), channel=TopupChannel.CASH, occurred_at=T0,
            operator="cashier-1", reason="move-out",
        ),
    ]  # fmt: skip
    assert balance_of(HH, ledger) == D("80.00")
    assert balance_of(subsidy_account(HH), ledger) == D("0.00")
    assert balance_of(REVENUE, ledger) == D("25.00")
    assert balance_of(SUBSIDY_FUND, ledger) == D("-20.00")
    assert balance_of("clearing:wechat", ledger) == D("-100.00")
    assert balance_of("cash:counter", ledger) == D("10.00")
    accounts = {line.account for posting in ledger for line in posting.lines}
    assert sum(balance_of(account, ledger) for account in accounts) == 0
    assert ledger[0].meta["channel"] == "wechat"


@pytest.mark.parametrize(
    "original",
    [
        topup_posting("wx-1", household=HH, amount=D("100.00"), channel=TopupChannel.WECHAT, occurred_at=T0),
        charge_posting(
            "c-1", household=HH, revenue=REVENUE, amount=D("7.31"), occurred_at=T0, subsidy_available=D("2")
        ),
    ],
)
def test_reversal_negates_exactly(original: Posting) -> None:
    later = T0 + timedelta(days=1)
    reversal = reversal_of(original, operator="finance-2", reason="duplicate top-up", occurred_at=later)
    assert reversal.kind is PostingKind.REVERSAL
    assert reversal.reverses == original.txn_id
    assert reversal.txn_id == f"reversal:{original.txn_id}"
    assert [(line.account, -line.amount) for line in reversal.lines] == [
        (line.account, line.amount) for line in original.lines
    ]
    assert dict(reversal.meta) == {
        "operator": "finance-2",
        "reason": "duplicate top-up",
        "original_kind": original.kind,
    }
    accounts = {line.account for line in original.lines}
    assert all(balance_of(account, [original, reversal]) == 0 for account in accounts)


@pytest.mark.parametrize(("operator", "reason"), [("", "x"), ("op", " ")])
def test_reversal_needs_operator_and_reason(operator: str, reason: str) -> None:
    original = topup_posting("t", household=HH, amount=D(1), channel=TopupChannel.CASH, occurred_at=T0)
    with pytest.raises(BillingDomainError):
        reversal_of(original, operator=operator, reason=reason, occurred_at=T0)


def test_posting_meta_is_read_only() -> None:
    posting = topup_posting("t", household=HH, amount=D(1), channel=TopupChannel.CASH, occurred_at=T0)
    with pytest.raises(TypeError):
        posting.meta["channel"] = "x"  # type: ignore[index]


# --- hourly accrual ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "posted_through", "hour"),
    [
        (T0 + timedelta(minutes=15), None, T0),
        (T0 + timedelta(hours=1), None, T0 + timedelta(hours=1)),  # an instant on the hour opens that hour
        (T0 + timedelta(hours=1, microseconds=-1), None, T0),
        (T0 + timedelta(minutes=15), T0, T0 + timedelta(hours=1)),  # a posted hour is closed: the next one
        (T0 + timedelta(minutes=15), T0 + timedelta(hours=2), T0 + timedelta(hours=3)),
        (T0 + timedelta(hours=3), T0 + timedelta(hours=2), T0 + timedelta(hours=3)),
        (datetime(2024, 3, 1, 8, 30, tzinfo=CHINA_STANDARD_TIME), None, T0),  # local instants count in UTC
    ],
)
def test_open_hour(at: datetime, posted_through: datetime | None, hour: datetime) -> None:
    assert open_hour(at, posted_through) == hour


def test_accrual_posts_whole_fen_and_carries_the_rest() -> None:
    accrual = HourlyAccrual()
    for minutes in (15, 30, 45, 60):
        accrual.add(
            household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=minutes), amount=D("0.1234")
        )
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=75), amount=D("0.0061"))
    first = accrual.flush(T0 + timedelta(hours=1))
    # 3 × 0.1234 in the first hour; the amount at 01:00 sharp belongs to the second hour.
    assert [(p.txn_id, p.amount_for(REVENUE)) for p in first] == [
        ("consumption:m1:20240301T00Z:household:42", D("0.37"))
    ]
    assert accrual.carry(HH, "m1") == D("0.0002")
    assert accrual.pending(HH, "m1") == D("0.1295")
    second = accrual.flush(T0 + timedelta(hours=2))
    assert [p.amount_for(REVENUE) for p in second] == [D("0.12")]  # 0.1234 + 0.0061 + 0.0002 carried in
    assert accrual.carry(HH, "m1") == D("0.0097")
    assert accrual.pending(HH, "m1") == 0
    assert accrual.flush(T0 + timedelta(hours=3)) == []  # 0.0097 is still under a fen


def test_accrual_does_not_post_open_hours() -> None:
    accrual = HourlyAccrual()
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=10), amount=D(5))
    assert accrual.flush(T0) == []  # the hour that begins at the cut-off is still open
    assert accrual.pending(HH, "m1") == D(5)
    assert accrual.flushed_through == {}


def test_late_amount_goes_to_the_next_open_hour() -> None:
    accrual = HourlyAccrual()
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=30), amount=D(1))
    accrual.flush(T0 + timedelta(hours=1))
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=40), amount=D(2))
    postings = accrual.flush(T0 + timedelta(hours=2))
    assert [(p.occurred_at, p.amount_for(REVENUE)) for p in postings] == [(T0 + timedelta(hours=1), D(2))]


def test_accrual_draws_subsidy_down_across_one_flush() -> None:
    accrual = HourlyAccrual()
    for hour in range(3):
        accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(hours=hour, minutes=5), amount=D(2))
    postings = accrual.flush(T0 + timedelta(hours=3), subsidy_available={HH: D(3)})
    assert [p.amount_for(subsidy_account(HH)) for p in postings] == [D(-2), D(-1), D(0)]
    assert [p.amount_for(HH) for p in postings] == [D(0), D(-1), D(-2)]


def test_accrual_refuses_a_second_revenue_account_for_a_meter() -> None:
    accrual = HourlyAccrual()
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0, amount=D(1))
    with pytest.raises(BillingDomainError):
        accrual.add(household=HH, meter_id="m1", revenue="revenue:water", at=T0, amount=D(1))


def test_accrual_state_survives_a_restart() -> None:
    accrual = HourlyAccrual()
    accrual.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=5), amount=D("1.006"))
    accrual.flush(T0 + timedelta(hours=1))
    resumed = HourlyAccrual(accrual.carries, accrual.flushed_through)
    resumed.add(household=HH, meter_id="m1", revenue=REVENUE, at=T0 + timedelta(minutes=50), amount=D("0.004"))
    postings = resumed.flush(T0 + timedelta(hours=2))
    assert [p.amount_for(REVENUE) for p in postings] == [D("0.01")]
    assert resumed.carry(HH, "m1") == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2", "m3"]),
            st.integers(0, 3 * 24 * 3600),  # seconds after T0
            st.decimals("0", "3", places=6),
        ),
        max_size=400,
    ),
    st.lists(st.integers(0, 3 * 24 * 3600), max_size=8),
)
def test_accrual_posts_plus_carries_equal_the_exact_total(
    charges: list[tuple[str, int, Decimal]], flush_points: list[int]
) -> None:
    accrual = HourlyAccrual()
    postings: list[Posting] = []
    flushes = iter(sorted(flush_points))
    next_flush = next(flushes, None)
    # Deliver in time order with flushes interleaved, so some amounts arrive after their hour closed.
    for meter, seconds, amount in sorted(charges, key=lambda c: c[1]):
        while next_flush is not None and next_flush <= seconds:
            postings += accrual.flush(T0 + timedelta(seconds=next_flush))
            next_flush = next(flushes, None)
        accrual.add(household=HH, meter_id=meter, revenue=REVENUE, at=T0 + timedelta(seconds=seconds), amount=amount)
    postings += accrual.flush(T0 + timedelta(days=5))

    for meter in ("m1", "m2", "m3"):
        exact = sum((amount for m, _, amount in charges if m == meter), D(0))
        posted = sum((p.amount_for(REVENUE) for p in postings if p.meta["meter_id"] == meter), D(0))
        assert posted + accrual.carry(HH, meter) == exact
        assert D(0) <= accrual.carry(HH, meter) < D("0.01")
    rows = Counter((p.meta["meter_id"], p.occurred_at.date()) for p in postings)
    assert all(count <= 24 for count in rows.values())
    assert len({p.txn_id for p in postings}) == len(postings)


# --- balance levels ----------------------------------------------------------------------

THRESHOLDS = BalanceThresholds(level1=D(20), level2=D(5), grace_credit=D(0))
BAND = D(2)


@pytest.mark.parametrize(
    ("balance", "previous", "expected"),
    [
        ("50", None, BalanceLevel.OK),
        ("20", BalanceLevel.OK, BalanceLevel.LOW_1),
        ("5", BalanceLevel.OK, BalanceLevel.LOW_2),
        ("0", BalanceLevel.LOW_2, BalanceLevel.EXHAUSTED),
        ("-3", None, BalanceLevel.EXHAUSTED),
        ("1", BalanceLevel.EXHAUSTED, BalanceLevel.EXHAUSTED),  # inside the band: stays
        ("2", BalanceLevel.EXHAUSTED, BalanceLevel.EXHAUSTED),
        ("2.01", BalanceLevel.EXHAUSTED, BalanceLevel.LOW_2),
        ("6", BalanceLevel.LOW_2, BalanceLevel.LOW_2),
        ("7.01", BalanceLevel.LOW_2, BalanceLevel.LOW_1),
        ("21", BalanceLevel.LOW_1, BalanceLevel.LOW_1),
        ("22.01", BalanceLevel.LOW_1, BalanceLevel.OK),
        ("100", BalanceLevel.EXHAUSTED, BalanceLevel.OK),
        ("19", BalanceLevel.LOW_2, BalanceLevel.LOW_1),
    ],
)
def test_classify_balance(balance: str, previous: BalanceLevel | None, expected: BalanceLevel) -> None:
    assert classify_balance(D(balance), previous, THRESHOLDS, BAND) is expected


def test_grace_credit_moves_exhaustion_below_zero() -> None:
    thresholds = BalanceThresholds(D(20), D(5), grace_credit=D(10))
    assert classify_balance(D(-9), BalanceLevel.LOW_2, thresholds, BAND) is BalanceLevel.LOW_2
    assert classify_balance(D(-10), BalanceLevel.LOW_2, thresholds, BAND) is BalanceLevel.EXHAUSTED


@pytest.mark.parametrize(("level1", "level2", "grace"), [("5", "20", "0"), ("20", "5", "-1"), ("20", "-1", "0")])
def test_invalid_thresholds(level1: str, level2: str, grace: str) -> None:
    with pytest.raises(BillingDomainError):
        BalanceThresholds(D(level1), D(level2), D(grace))


@pytest.mark.parametrize(
    ("previous", "new", "events"),
    [
        (BalanceLevel.OK, BalanceLevel.OK, []),
        (BalanceLevel.OK, BalanceLevel.LOW_1, [BalanceEventKind.LOW_1]),
        (BalanceLevel.LOW_1, BalanceLevel.LOW_2, [BalanceEventKind.LOW_2]),
        (BalanceLevel.OK, BalanceLevel.EXHAUSTED, [BalanceEventKind.EXHAUSTED]),
        (None, BalanceLevel.EXHAUSTED, [BalanceEventKind.EXHAUSTED]),
        (BalanceLevel.EXHAUSTED, BalanceLevel.LOW_2, [BalanceEventKind.RESTORED]),
        (BalanceLevel.EXHAUSTED, BalanceLevel.OK, [BalanceEventKind.RESTORED]),
        (BalanceLevel.LOW_2, BalanceLevel.OK, []),
        (BalanceLevel.EXHAUSTED, BalanceLevel.EXHAUSTED, []),
    ],
)
def test_transition_events(previous: BalanceLevel | None, new: BalanceLevel, events: list[BalanceEventKind]) -> None:
    assert transition_events(previous, new) == events


def test_no_flapping_inside_the_band() -> None:
    level: BalanceLevel | None = None
    events: list[BalanceEventKind] = []
    for balance in ["0", "1", "-0.5", "1.99", "0", "2", "0.01"] * 10:
        new = classify_balance(D(balance), level, THRESHOLDS, BAND)
        events += transition_events(level, new)
        level = new
    assert events == [BalanceEventKind.EXHAUSTED]


@settings(max_examples=300)
@given(
    st.decimals("-50", "50", places=2),
    st.lists(st.decimals("-15", "15", places=2), max_size=200),
    st.decimals("0", "5", places=2),
)
def test_random_walks_alternate_exhausted_and_restored(start: Decimal, steps: list[Decimal], band: Decimal) -> None:
    balance = start
    level: BalanceLevel | None = None
    power: list[BalanceEventKind] = []
    for step in [D(0), *steps]:
        balance += step
        new = classify_balance(balance, level, THRESHOLDS, band)
        power += [
            e for e in transition_events(level, new) if e in (BalanceEventKind.EXHAUSTED, BalanceEventKind.RESTORED)
        ]
        level = new
        # The level is never better than the balance alone allows, and worsens at once.
        assert (level is BalanceLevel.EXHAUSTED) >= (balance <= 0)
    assert all(a != b for a, b in pairwise(power))
    if power:
        assert power[0] is BalanceEventKind.EXHAUSTED
    assert (power.count(BalanceEventKind.EXHAUSTED) - power.count(BalanceEventKind.RESTORED)) == (
        1 if level is BalanceLevel.EXHAUSTED else 0
    )
