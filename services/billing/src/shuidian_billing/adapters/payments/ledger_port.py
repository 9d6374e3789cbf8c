"""The only place payments touch the core billing service: credit through the idempotent top-up,
debit through the domain's refund posting (`ledger.refund_posting`), read refundable credit per purse,
re-evaluate balance levels after a debit, and — for a move-out settlement — bill closing readings
down the ordinary reading path and post every ended hour."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_billing.adapters import store
from shuidian_billing.adapters.billing import Billing
from shuidian_billing.domain import ledger
from shuidian_shared.messages import ReadingBatch, Utility, utcnow
from shuidian_shared.money import split_cents

ZERO = Decimal("0.00")


async def credit(
    billing: Billing, *, account_id: str, amount: Decimal, channel: str, reference: str | None, key: str
) -> dict[str, Any]:
    """Credit once per `key` (a replay returns the original payment, a different payment under the key is a 409)."""
    return await billing.credits.top_up(account_id, amount, channel, reference, key)


async def purse_of_payment(conn: AsyncConnection, txn_id: uuid.UUID) -> str:
    """The purse (household ledger account) a payment's ledger transaction credited."""
    purse: str = (
        await conn.execute(
            text(
                "SELECT ledger_account FROM billing.ledger_entries WHERE txn_id = :t AND amount > 0 "
                "AND ledger_account LIKE 'household:%' AND ledger_account NOT LIKE :subsidy ORDER BY entry_id LIMIT 1"
            ),
            {"t": txn_id, "subsidy": "%:subsidy"},
        )
    ).scalar_one()
    return purse


async def refundable_credit(billing: Billing, conn: AsyncConnection, account_id: str) -> dict[str, Decimal]:
    """Per purse, the paid credit that may go back to the tenant, in whole fen.

    Subsidy is never refunded, and consumption accrued but not yet posted is owed: charges draw on
    subsidy first, so refundable = min(paid, paid + subsidy − pending), floored to the fen.
    """
    figures = await billing.levels.available(conn, [account_id])
    result: dict[str, Decimal] = {}
    for (account, name), purse in figures.items():
        ledger_account = store.purse(account, None if name == "all" else Utility(name))
        refundable, _ = split_cents(min(purse["paid"], purse["available"]))
        result[ledger_account] = max(refundable, ZERO)
    return result


async def debit_refund(
    conn: AsyncConnection, *, purse: str, amount: Decimal, channel: str, operator: str, reason: str, memo: str
) -> uuid.UUID:
    """Post a refund: the purse's credit goes back out through the channel it came in on."""
    txn_id = uuid.uuid4()
    posting = ledger.refund_posting(
        str(txn_id),
        household=purse,
        amount=amount,
        channel=ledger.TopupChannel(channel),
        occurred_at=utcnow(),
        operator=operator,
        reason=reason,
    )
    await store.post_many(conn, [store.transaction_of(posting, txn_id, memo=memo)])
    return txn_id


async def after_debit(billing: Billing, conn: AsyncConnection, account_id: str) -> None:
    """Emit the balance events a debit causes (low, exhausted), in the same transaction."""
    await billing.levels.evaluate_levels(conn, {account_id})


async def bill_readings(billing: Billing, batch: ReadingBatch) -> None:
    """Bill a batch of readings exactly as if it had come from the field (its own transaction)."""
    await billing.readings.bill([batch])


async def post_ended_hours(billing: Billing, before: datetime) -> None:
    """Post every accrual of an hour that ended before `before` to the ledger."""
    await billing.poster.flush(before=before)


async def balance_figures(billing: Billing, conn: AsyncConnection, account_id: str) -> dict[str, Decimal]:
    """The account's paid, subsidy, pending (accrued, unposted) and available credit over all its purses."""
    figures = await billing.levels.available(conn, [account_id])
    return {
        name: sum((purse[name] for purse in figures.values()), ZERO)
        for name in ("paid", "subsidy", "pending", "available")
    }


async def waive_sub_fen(conn: AsyncConnection, account_id: str) -> None:
    """Drop the account's sub-fen carries (consumption and fees) at its final bill.

    Amounts are posted in whole fen rounded toward zero, the part of a fen cut off carried to the
    next posting: a closed account has no next posting, so what is under a fen is never charged —
    and must not hold back a fen of the refund (refundable credit counts carries as owed).
    """
    await conn.execute(
        text("UPDATE billing.carries SET remainder = 0 WHERE account_id = :a AND remainder <> 0"), {"a": account_id}
    )
    await conn.execute(
        text("UPDATE billing.fee_carries SET remainder = 0 WHERE account_id = :a AND remainder <> 0"),
        {"a": account_id},
    )
