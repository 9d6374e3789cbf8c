"""Billing's payment problems become staff alarms (stateless): one open `payment_problem` alarm per provider and
kind, placed in the payer's estate when billing knows it. Nothing clears it: staff resolve the review item and
the alarm together; a later problem of the same kind updates the open alarm."""

from __future__ import annotations

from shuidian_alarm.domain.decisions import Decision, Raise
from shuidian_alarm.domain.targets import Placement
from shuidian_shared.contracts.payments import PaymentProblem, PaymentProblemKind
from shuidian_shared.messages import AlarmSeverity

PAYMENT_PROBLEM = "payment_problem"

_WHAT: dict[PaymentProblemKind, tuple[str, str]] = {
    PaymentProblemKind.AMOUNT_MISMATCH: (
        "支付金额与订单不符，未入账",
        "a payment's amount differs from its order; nothing credited",
    ),
    PaymentProblemKind.WRONG_MERCHANT: (
        "支付通知的商户与付款人所在小区的商户不符，已拒绝",
        "a notification from a merchant that does not serve the payer's estate was refused",
    ),
    PaymentProblemKind.FORGED_NOTIFICATIONS: (
        "短时间内大量支付通知验签失败，疑似伪造",
        "a burst of payment notifications failed verification (forged?)",
    ),
    PaymentProblemKind.RECONCILIATION: (
        "对账差异：渠道账单与账本不符",
        "reconciliation: the provider's bill and the ledger disagree",
    ),
    PaymentProblemKind.REFUND_FAILED: (
        "渠道退款失败，需线下退款",
        "the provider refused a refund; pay the tenant back another way",
    ),
}


def on_payment_problem(event: PaymentProblem) -> list[Decision]:
    """A payment held for review: a major alarm for the provider and kind, with the review item to open."""
    zh, en = _WHAT[event.kind]
    amount = "" if event.amount is None else f"{event.amount}"
    details = {
        "provider": event.provider,
        "kind": event.kind.value,
        "subject": event.subject,
        "review_id": "" if event.review_id is None else str(event.review_id),
        "amount": amount,
        "account_id": event.account_id or "",
        "detail": event.detail,
    }
    where = f"（金额 {amount} 元）" if amount else ""
    return [
        Raise(
            f"payments:{event.provider}:{event.kind.value}",
            PAYMENT_PROBLEM,
            AlarmSeverity.MAJOR,
            f"支付异常 · {event.provider}：{zh}{where}，请在缴费复核队列处理（{event.subject}）",
            f"Payment problem · {event.provider}: {en}{f' ({amount} CNY)' if amount else ''}; "
            f"see the payment review queue ({event.subject})",
            details,
            Placement(estate=event.estate_id),
        )
    ]
