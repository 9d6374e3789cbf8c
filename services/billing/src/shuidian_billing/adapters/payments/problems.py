"""Payments held for a person: every review item an online payment opens is announced to the alarm service
(`PaymentProblem` through the outbox, in the review item's own transaction), so staff hear of an amount or
merchant mismatch, a burst of forged notifications, a reconciliation difference or a refused refund as an
alarm — not only as a metric. An item already open (same kind and subject) is not announced again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.contracts.payments import PaymentProblem, PaymentProblemKind

REVIEWS_OPENED = Counter(
    "billing_payment_reviews_opened_total", "payments held for review (alarm on any increase)", ["provider", "kind"]
)


@dataclass(frozen=True, slots=True)
class Problems:
    """Opens review items and queues their announcement; `source` names this replica in the messages."""

    outbox: Outbox | None
    source: str

    async def open(
        self,
        conn: AsyncConnection,
        *,
        review_kind: str,
        problem: PaymentProblemKind,
        provider: str,
        subject: str,
        amount: Decimal | None,
        reason: str,
        detail: dict[str, Any],
        account_id: str | None = None,
    ) -> int | None:
        """The new review item's id, or None when one of this kind and subject is already there."""
        review_id: int | None = (
            await conn.execute(
                text(
                    "INSERT INTO billing.payment_reviews (kind, subject, amount, reason, detail, account_id) "
                    "VALUES (:k, :s, :m, :r, CAST(:d AS jsonb), :a) ON CONFLICT (kind, subject) DO NOTHING "
                    "RETURNING review_id"
                ),
                {
                    "k": review_kind,
                    "s": subject,
                    "m": amount if amount is not None else Decimal("0.00"),
                    "r": reason,
                    "d": json.dumps(detail),
                    "a": account_id,
                },
            )
        ).scalar()
        if review_id is None:
            return None
        REVIEWS_OPENED.labels(provider, problem.value).inc()
        if self.outbox is not None:
            estate = None
            if account_id is not None:
                estate = (
                    await conn.execute(
                        text("SELECT estate_id FROM billing.accounts WHERE account_id = :a"), {"a": account_id}
                    )
                ).scalar()
            message = PaymentProblem(
                source=self.source[:128],
                provider=provider,
                kind=problem,
                review_id=review_id,
                subject=subject[:200],
                amount=amount,
                estate_id=estate,
                account_id=account_id,
                detail=reason[:500],
            )
            await self.outbox.add(conn, topics.payment_problems(provider), message)
        return review_id

    def published(self) -> None:
        """Wake the outbox after the transaction that queued announcements committed."""
        if self.outbox is not None:
            self.outbox.notify()
