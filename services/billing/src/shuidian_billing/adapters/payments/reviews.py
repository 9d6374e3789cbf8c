"""The payment review queue: bank lines nobody could match and online payments whose amount
disagreed with their order. Staff assign an item to an account (credited once, through the same
idempotency key the automatic path would have used) or dismiss it with a reason."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.errors import Conflict, NotFound


class ReviewQueue:
    def __init__(self, engine: AsyncEngine, billing: Billing) -> None:
        self._engine = engine
        self._billing = billing

    async def items(self, status: str, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT * FROM billing.payment_reviews WHERE status = :s ORDER BY review_id LIMIT :n"),
                {"s": status, "n": limit},
            )
            return [r._asdict() for r in rows]

    async def item(self, review_id: int) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM billing.payment_reviews WHERE review_id = :r"), {"r": review_id})
            ).first()
        if row is None:
            raise NotFound(f"no review item {review_id}")
        return row._asdict()

    async def assign(self, review_id: int, account_id: str, operator: str) -> dict[str, Any]:
        """Credit the item's money to `account_id`; assigning again to the same account changes nothing."""
        item = await self.item(review_id)
        creditable = item["kind"] in ("bank_unmatched", "callback_amount_mismatch") or (
            item["kind"] == "reconciliation_missing" and item["detail"].get("line") == "payment"
        )
        if not creditable:
            raise Conflict(
                "此项不能入账：处理后请关闭 · only money received can be credited; settle this item and dismiss it",
                code="review_not_creditable",
            )
        if item["status"] == "dismissed" or (item["status"] == "assigned" and item["account_id"] != account_id):
            raise Conflict(f"review item {review_id} is already {item['status']}", code="review_closed")
        if item["kind"] == "bank_unmatched":
            channel, key, reference = (
                "bank",
                f"bank:{item['subject']}",
                str(item["detail"].get("memo", ""))[:100] or None,
            )
        else:
            channel, key, reference = item["subject"].split(":", 1)[0], item["subject"], item["detail"].get("order_id")
        payment = await ledger_port.credit(
            self._billing, account_id=account_id, amount=item["amount"], channel=channel, reference=reference, key=key
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE billing.payment_reviews SET status = 'assigned', account_id = :a, payment_id = :p, "
                    "resolved_by = coalesce(resolved_by, :o), resolved_at = coalesce(resolved_at, now()) WHERE review_id = :r"
                ),
                {"a": account_id, "p": payment["payment_id"], "o": operator, "r": review_id},
            )
            if item["kind"] == "bank_unmatched":
                await conn.execute(
                    text(
                        "UPDATE billing.bank_lines SET status = 'assigned', account_id = :a, payment_id = :p WHERE line_key = :k"
                    ),
                    {"a": account_id, "p": payment["payment_id"], "k": item["subject"]},
                )
        return {**(await self.item(review_id)), "payment": payment}

    async def dismiss(self, review_id: int, operator: str, reason: str) -> dict[str, Any]:
        """Close an item without crediting anyone (e.g. the bank returned the transfer)."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE billing.payment_reviews SET status = 'dismissed', resolved_by = :o, resolved_at = now(), "
                        "reason = reason || ' · ' || :why WHERE review_id = :r AND status = 'open' RETURNING review_id"
                    ),
                    {"o": operator, "why": reason, "r": review_id},
                )
            ).first()
        item = await self.item(review_id)
        if row is None and item["status"] != "dismissed":
            raise Conflict(f"review item {review_id} is already {item['status']}", code="review_closed")
        return item
