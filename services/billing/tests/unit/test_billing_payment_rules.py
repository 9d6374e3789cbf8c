"""The pure rules of online payments: which method an order is opened with, what the sweeper does with
an open order, and how a provider's bill is matched against the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shuidian_billing.domain.payment_orders import SweepAction, expires_at, payment_method, sweep_action
from shuidian_billing.domain.payment_reconciliation import Kind, Line, reconcile
from shuidian_billing.errors import BillingDomainError

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("provider", "method", "openid", "ip", "expected"),
    [
        ("wechat", None, "", "", "native"),
        ("wechat", "jsapi", "o-1", "", "jsapi"),
        ("wechat", "h5", "", "203.0.113.7", "h5"),
        ("alipay", None, "", "", "precreate"),
        ("alipay", "wap", "", "", "wap"),
        ("sandbox", None, "", "", "native"),
    ],
)
def test_payment_method(provider: str, method: str | None, openid: str, ip: str, expected: str) -> None:
    assert payment_method(provider, method, openid=openid, client_ip=ip) == expected


@pytest.mark.parametrize(
    ("provider", "method", "openid", "ip", "code"),
    [
        ("wechat", "jsapi", "", "", "openid_required"),
        ("wechat", "h5", "", "", "client_ip_required"),
        ("wechat", "wap", "", "", "unsupported_method"),
        ("alipay", "native", "", "", "unsupported_method"),
        ("unionpay", None, "", "", "unknown_provider"),
    ],
)
def test_payment_method_refusals(provider: str, method: str | None, openid: str, ip: str, code: str) -> None:
    with pytest.raises(BillingDomainError) as refused:
        payment_method(provider, method, openid=openid, client_ip=ip)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("paid", "dead", "minutes_left", "expected"),
    [
        (True, False, 10, SweepAction.CREDIT),
        (True, False, -10, SweepAction.CREDIT),  # paid before it expired: the money counts
        (False, True, 10, SweepAction.MARK_CLOSED),
        (False, True, -10, SweepAction.MARK_CLOSED),
        (False, False, -1, SweepAction.CLOSE),
        (False, False, 0, SweepAction.CLOSE),
        (False, False, 1, SweepAction.WAIT),
    ],
)
def test_sweep_action(paid: bool, dead: bool, minutes_left: int, expected: SweepAction) -> None:
    expires = NOW + timedelta(minutes=minutes_left)
    assert sweep_action(paid=paid, dead=dead, expires=expires, now=NOW) is expected


def test_expiry() -> None:
    assert expires_at(NOW, 30) == NOW + timedelta(minutes=30)


def pay(key: str, amount: str, kind: Kind = Kind.PAYMENT) -> Line:
    return Line(kind, key, f"SD-{key}", Decimal(amount))


def test_reconcile_balanced_day() -> None:
    lines = [pay("t1", "10.00"), pay("t2", "5.50"), pay("r1", "2.00", Kind.REFUND)]
    report = reconcile(lines, list(reversed(lines)))
    assert report.balanced
    assert (report.settled_payments, report.settled_refunds, report.booked_payments) == (
        Decimal("15.50"),
        Decimal("2.00"),
        Decimal("15.50"),
    )


def test_reconcile_differences() -> None:
    settled = [pay("t1", "10.00"), pay("t2", "5.00"), pay("t4", "1.00"), pay("r1", "2.00", Kind.REFUND)]
    booked = [pay("t1", "10.00"), pay("t2", "5.50"), pay("t3", "7.00"), pay("r1", "2.00")]  # r1 booked as payment
    found = {(d.problem, d.kind, d.key, d.settled, d.booked) for d in reconcile(settled, booked).differences}
    assert found == {
        ("amount", Kind.PAYMENT, "t2", Decimal("5.00"), Decimal("5.50")),
        ("missing", Kind.PAYMENT, "t4", Decimal("1.00"), None),
        ("extra", Kind.PAYMENT, "t3", None, Decimal("7.00")),
        ("missing", Kind.REFUND, "r1", Decimal("2.00"), None),
        ("extra", Kind.PAYMENT, "r1", None, Decimal("2.00")),
    }


def test_reconcile_sums_a_key_split_over_lines() -> None:
    assert reconcile(
        [pay("r", "1.00", Kind.REFUND), pay("r", "2.00", Kind.REFUND)], [pay("r", "3.00", Kind.REFUND)]
    ).balanced
