"""Refunds and move-out settlement. A refund goes back through the channel of the payment it
refunds, never exceeds what that payment brought in (less earlier refunds) nor the credit the
household still has, and happens once per idempotency key. Settlement refunds the whole
remaining credit, newest payments first. A refund of a WeChat Pay or Alipay payment is posted to the
ledger first and then sent to the provider (`OnlinePayments.submit_refunds`): `provider_status` tells
where it stands there."""

from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.adapters.payments.bank import require_account
from shuidian_billing.errors import Conflict, NotFound, PaymentError
from shuidian_kit.outbox import Outbox

if TYPE_CHECKING:
    from shuidian_billing.adapters.payments.online import OnlinePayments

ZERO = Decimal("0.00")


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def _refund_out(row: Any, replayed: bool) -> dict[str, Any]:
    keys = (
        "refund_id",
        "payment_id",
        "account_id",
        "channel",
        "amount",
        "txn_id",
        "operator",
        "reason",
        "created_at",
        "provider_status",
    )
    data = row if isinstance(row, dict) else row._asdict()
    return {**{k: data[k] for k in keys}, "replayed": replayed}


class Refunds:
    def __init__(
        self, engine: AsyncEngine, billing: Billing, outbox: Outbox, online: OnlinePayments | None = None
    ) -> None:
        self._engine = engine
        self._billing = billing
        self._outbox = outbox
        self._online = online

    async def refund(
        self, payment_id: uuid.UUID, amount: Decimal, operator: str, reason: str, key: str
    ) -> dict[str, Any]:
        """Refund part or all of one payment."""
        if amount <= 0:
            raise PaymentError("refund amount must be positive", code="invalid_amount", status_code=422)
        async with self._engine.begin() as conn:
            payment = (
                await conn.execute(text("SELECT * FROM billing.payments WHERE payment_id = :p"), {"p": payment_id})
            ).first()
            if payment is None:
                raise NotFound(f"no payment {payment_id}")
            await _lock_account(conn, payment.account_id)
            fingerprint = _fingerprint(payment_id, amount)
            existing = await _refund_by_key(conn, f"refund:{key}")
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different refund", code="idempotency_conflict")
                return _refund_out(existing, True)
            refundable = await _refundable(conn, payment)
            if amount > refundable:
                raise PaymentError(
                    f"退款 {amount} 超过该笔缴费可退金额 {refundable} · refund exceeds what is left of the payment",
                    code="refund_exceeds_payment",
                    status_code=409,
                )
            purse = await ledger_port.purse_of_payment(conn, payment.txn_id)
            credit = (await ledger_port.refundable_credit(self._billing, conn, payment.account_id)).get(purse, ZERO)
            if amount > credit:
                raise PaymentError(
                    f"退款 {amount} 超过账户可用余额 {credit} · refund exceeds the remaining credit",
                    code="refund_exceeds_balance",
                    status_code=409,
                )
            row = await self._post(conn, payment, purse, amount, operator, reason, f"refund:{key}", fingerprint, None)
            await ledger_port.after_debit(self._billing, conn, payment.account_id)
        self._outbox.notify()
        return _refund_out(await self._to_provider(row), False)

    async def settle(self, account_id: str, operator: str, reason: str, key: str) -> dict[str, Any]:
        """Move-out settlement: refund the remaining credit (whole fen) against the newest payments first."""
        async with self._engine.begin() as conn:
            await _lock_account(conn, account_id)
            done = (
                await conn.execute(
                    text("SELECT account_id, summary FROM billing.settlements WHERE idempotency_key = :k"), {"k": key}
                )
            ).first()
            if done is not None:
                if done.account_id != account_id:
                    raise Conflict("idempotency key already used for another account", code="idempotency_conflict")
                return {**done.summary, "replayed": True}
            await require_account(conn, account_id)
            credits = await ledger_port.refundable_credit(self._billing, conn, account_id)
            left = dict(credits)
            settlement_id = uuid.uuid4()
            refunds: list[dict[str, Any]] = []
            payments = await conn.execute(
                text("SELECT * FROM billing.payments WHERE account_id = :a ORDER BY created_at DESC, payment_id"),
                {"a": account_id},
            )
            for payment in payments.all():
                if not any(v > 0 for v in left.values()):
                    break
                purse = await ledger_port.purse_of_payment(conn, payment.txn_id)
                amount = min(left.get(purse, ZERO), await _refundable(conn, payment))
                if amount <= 0:
                    continue
                row = await self._post(
                    conn,
                    payment,
                    purse,
                    amount,
                    operator,
                    reason,
                    f"settlement:{key}:{payment.payment_id}",
                    _fingerprint(payment.payment_id, amount),
                    settlement_id,
                )
                refunds.append(json.loads(json.dumps(_refund_out(row, False), default=str)))
                left[purse] -= amount
            credit = sum(credits.values(), ZERO)
            remaining = sum(left.values(), ZERO)
            refunded = credit - remaining
            after = await self._billing.levels.available(conn, [account_id])
            summary = {
                "settlement_id": str(settlement_id),
                "account_id": account_id,
                "refundable_before": str(credit),
                "refunded": str(refunded),
                "not_refunded": str(remaining),
                "paid_balance_after": str(sum((p["paid"] for p in after.values()), ZERO)),
                "subsidy_kept": str(sum((p["subsidy"] for p in after.values()), ZERO)),
                "refunds": refunds,
                "operator": operator,
                "reason": reason,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.settlements (settlement_id, account_id, idempotency_key, summary) "
                    "VALUES (:s, :a, :k, CAST(:j AS jsonb))"
                ),
                {"s": settlement_id, "a": account_id, "k": key, "j": json.dumps(summary)},
            )
            if refunds:
                await ledger_port.after_debit(self._billing, conn, account_id)
        self._outbox.notify()
        for refund in refunds:
            if refund["provider_status"] == "pending" and self._online is not None:
                await self._online.submit_refunds([uuid.UUID(refund["refund_id"])])
        return {**summary, "replayed": False}

    async def of_payment(self, payment_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT * FROM billing.refunds WHERE payment_id = :p ORDER BY created_at"), {"p": payment_id}
            )
            return [_refund_out(r, False) for r in rows]

    async def _to_provider(self, row: Any) -> Any:
        """After the ledger committed: send a refund of an online payment to its provider (the row as it is then)."""
        if row.provider_status != "pending" or self._online is None:
            return row
        await self._online.submit_refunds([row.refund_id])
        async with self._engine.connect() as conn:
            return (
                await conn.execute(text("SELECT * FROM billing.refunds WHERE refund_id = :r"), {"r": row.refund_id})
            ).one()

    async def _post(
        self,
        conn: AsyncConnection,
        payment: Any,
        purse: str,
        amount: Decimal,
        operator: str,
        reason: str,
        key: str,
        fingerprint: str,
        settlement_id: uuid.UUID | None,
    ) -> Any:
        txn_id = await ledger_port.debit_refund(
            conn,
            purse=purse,
            amount=amount,
            channel=payment.channel,
            operator=operator,
            reason=reason,
            memo=f"refund of {payment.payment_id} by {operator}: {reason}",
        )
        return (
            await conn.execute(
                text(
                    "INSERT INTO billing.refunds (refund_id, payment_id, account_id, channel, amount, idempotency_key, "
                    "fingerprint, txn_id, operator, reason, settlement_id, provider_status) "
                    "VALUES (:i, :p, :a, :c, :m, :k, :f, :t, :o, :r, :s, :ps) "
                    "RETURNING *"
                ),
                {
                    "i": uuid.uuid4(),
                    "p": payment.payment_id,
                    "a": payment.account_id,
                    "c": payment.channel,
                    "m": amount,
                    "k": key,
                    "f": fingerprint,
                    "t": txn_id,
                    "o": operator,
                    "r": reason,
                    "s": settlement_id,
                    "ps": "pending" if self._online and self._online.refunds_at_provider(payment.channel) else None,
                },
            )
        ).one()


async def _lock_account(conn: AsyncConnection, account_id: str) -> None:
    # Refunds and settlements of one account run one at a time, so two can never spend the same credit.
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"refund-account:{account_id}"})


async def _refund_by_key(conn: AsyncConnection, key: str) -> Any:
    return (await conn.execute(text("SELECT * FROM billing.refunds WHERE idempotency_key = :k"), {"k": key})).first()


async def _refundable(conn: AsyncConnection, payment: Any) -> Decimal:
    refunded: Decimal = (
        await conn.execute(
            text("SELECT coalesce(sum(amount), 0) FROM billing.refunds WHERE payment_id = :p"),
            {"p": payment.payment_id},
        )
    ).scalar_one()
    return Decimal(payment.amount - refunded)
