"""Billing's payment problems, announced to the alarm service (topic `payments/problems/{provider}`).

Every payment that billing holds for a person to look at opens a review item (`GET /v1/payments/reviews`) and,
in the same transaction, queues one `PaymentProblem`; alarm raises a `payment_problem` alarm, one open per
provider and kind, so staff hear of it instead of a metric rising unseen.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from shuidian_shared.messages import Identifier, Message
from shuidian_shared.money import Money


class PaymentProblemKind(StrEnum):
    AMOUNT_MISMATCH = "amount_mismatch"  # paid another amount than the order's: nothing credited
    WRONG_MERCHANT = "wrong_merchant"  # a merchant's notification for an order of another merchant's estate
    FORGED_NOTIFICATIONS = "forged_notifications"  # a burst of notifications that failed verification
    RECONCILIATION = "reconciliation"  # the provider's daily bill and the ledger disagree
    REFUND_FAILED = "refund_failed"  # the ledger paid the tenant back, the provider did not


class PaymentProblem(Message):
    """A payment held for review: what kind, where, how much, and the review item that holds it."""

    provider: Identifier
    kind: PaymentProblemKind
    review_id: int | None = Field(default=None, ge=1, description="the review item (GET /v1/payments/reviews)")
    subject: str = Field(max_length=200, description="what the review item is about: a transaction, refund or window")
    amount: Money | None = None
    estate_id: Identifier | None = None
    account_id: Identifier | None = None
    detail: str = Field(default="", max_length=500)
