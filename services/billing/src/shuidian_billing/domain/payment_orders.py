"""Rules of an online payment order's life (pure): which payment methods each provider offers, when
an order expires, and what the sweeper does with an open order once it has asked the provider.

    created (open) ──paid at the provider──▶ paid     (credited once, by provider transaction id)
         │ ├──provider says closed──────────▶ closed
         │ └──expired, closed at provider───▶ expired
    A payment that arrives for a closed or expired order is still credited: the money was taken.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from shuidian_billing.errors import BillingDomainError

METHODS: dict[str, tuple[str, ...]] = {
    "wechat": ("native", "jsapi", "h5"),
    "alipay": ("precreate", "wap"),
    "sandbox": ("native",),
}


class SweepAction(StrEnum):
    CREDIT = "credit"  # the provider says it was paid: credit through the notification's path
    MARK_CLOSED = "mark_closed"  # the provider closed it (or it can never be paid)
    CLOSE = "close"  # expired and unpaid: close it at the provider, then mark it expired
    WAIT = "wait"  # still payable: ask again next round


def payment_method(provider: str, method: str | None, *, openid: str, client_ip: str) -> str:
    """The method an order is opened with (the provider's first by default); refuses what the provider
    does not offer or a method missing what it needs (JSAPI: the payer's openid; H5: the payer's IP)."""
    offered = METHODS.get(provider)
    if offered is None:
        raise BillingDomainError(f"unknown payment provider {provider}", code="unknown_provider")
    chosen = method or offered[0]
    if chosen not in offered:
        raise BillingDomainError(
            f"{provider} 不支持 {chosen} 支付 · {provider} offers {', '.join(offered)}", code="unsupported_method"
        )
    if chosen == "jsapi" and not openid:
        raise BillingDomainError("JSAPI 支付需要付款人 openid · jsapi needs the payer's openid", code="openid_required")
    if chosen == "h5" and not client_ip:
        raise BillingDomainError("H5 支付需要付款人 IP · h5 needs the payer's client_ip", code="client_ip_required")
    return chosen


def expires_at(created_at: datetime, minutes: int) -> datetime:
    """When an unpaid order stops being payable."""
    return created_at + timedelta(minutes=minutes)


def sweep_action(*, paid: bool, dead: bool, expires: datetime, now: datetime) -> SweepAction:
    """What to do with an open order after asking the provider about it."""
    if paid:
        return SweepAction.CREDIT
    if dead:
        return SweepAction.MARK_CLOSED
    if now >= expires:
        return SweepAction.CLOSE
    # Not paid yet, or not seen yet (nobody scanned the QR code): still payable until it expires.
    return SweepAction.WAIT
