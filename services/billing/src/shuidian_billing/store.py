"""Ledger and balance persistence: post balanced transactions, keep cached balances equal to the entries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


def household(account_id: str) -> str:
    """Ledger account of a household's prepaid balance."""
    return f"household:{account_id}"


@dataclass(frozen=True)
class Entry:
    ledger_account: str
    amount: Decimal
    meter_id: str | None = None
    period_start: datetime | None = None


async def post(
    conn: AsyncConnection, kind: str, entries: list[Entry], *, memo: str = "", reverses: uuid.UUID | None = None
) -> uuid.UUID:
    """Append one balanced transaction and move the cached balances with it (same database transaction)."""
    if sum((e.amount for e in entries), Decimal(0)) != 0:
        raise ValueError("a ledger transaction must balance")
    txn_id = uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO billing.ledger_entries (txn_id, ledger_account, amount, kind, meter_id, period_start, reverses, memo) "
            "SELECT :t, a, m, :k, mt, p, :r, :memo FROM unnest(CAST(:a AS text[]), CAST(:m AS numeric[]), "
            "CAST(:mt AS text[]), CAST(:p AS timestamptz[])) AS u(a, m, mt, p)"
        ),
        {
            "t": txn_id,
            "k": kind,
            "r": reverses,
            "memo": memo,
            "a": [e.ledger_account for e in entries],
            "m": [e.amount for e in entries],
            "mt": [e.meter_id for e in entries],
            "p": [e.period_start for e in entries],
        },
    )
    deltas: dict[str, Decimal] = {}
    for e in entries:
        deltas[e.ledger_account] = deltas.get(e.ledger_account, Decimal(0)) + e.amount
    await add_to_balances(conn, deltas)
    return txn_id


async def add_to_balances(conn: AsyncConnection, deltas: dict[str, Decimal]) -> None:
    # Sorted so concurrent writers lock rows in the same order (no deadlocks).
    accounts = sorted(deltas)
    await conn.execute(
        text(
            "INSERT INTO billing.balances (ledger_account, balance) "
            "SELECT * FROM unnest(CAST(:a AS text[]), CAST(:d AS numeric[])) "
            "ON CONFLICT (ledger_account) DO UPDATE SET balance = billing.balances.balance + EXCLUDED.balance"
        ),
        {"a": accounts, "d": [deltas[a] for a in accounts]},
    )
