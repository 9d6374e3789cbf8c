"""Ledger and balance persistence: post balanced transactions, keep cached balances equal to the entries.

`post` (one transaction) and `post_many` (many, in two statements) are the only ways money enters
the ledger; both move `billing.balances` in the same database transaction as the entries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_billing.domain import ledger
from shuidian_shared.messages import Utility


def array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of numbers or timestamps (None → NULL), sent as one text parameter.

    A whole column of a set-based write then travels as one string that PostgreSQL parses in C,
    instead of a list that the driver encodes element by element (the larger share of billing's
    CPU on the reading path). Use it only for values whose text never needs quoting: Decimal,
    int and ISO timestamps; cast in SQL with `CAST(CAST(:x AS text) AS numeric[])`.
    """
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of strings, each quoted, so any text survives exactly."""
    return (
        "{"
        + ",".join(["NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values])
        + "}"
    )


def household(account_id: str) -> str:
    """Ledger account of a household's prepaid balance (the shared purse, 水电一卡通)."""
    return f"household:{account_id}"


def purse(account_id: str, utility: Utility | None) -> str:
    """Ledger account of a purse: the shared one (utility None) or one utility's separate balance."""
    return household(account_id) if utility is None else f"household:{account_id}:{utility.value}"


def subsidy(purse_account: str) -> str:
    """The subsidy (补贴) account beside a purse: credited by programmes, drawn on first."""
    return f"{purse_account}:subsidy"


@dataclass(frozen=True)
class Entry:
    ledger_account: str
    amount: Decimal
    meter_id: str | None = None
    period_start: datetime | None = None


@dataclass(frozen=True)
class Transaction:
    kind: str
    entries: list[Entry]
    memo: str = ""
    reverses: uuid.UUID | None = None
    txn_id: uuid.UUID = field(default_factory=uuid.uuid4)


def transaction_of(
    posting: ledger.Posting,
    txn_id: uuid.UUID,
    *,
    memo: str = "",
    meter_id: str | None = None,
    period_start: datetime | None = None,
) -> Transaction:
    """A domain posting as the ledger table stores it (every line tagged with the meter and period, if any)."""
    entries = [Entry(line.account, line.amount, meter_id, period_start) for line in posting.lines]
    return Transaction(posting.kind.value, entries, memo, txn_id=txn_id)


async def post_many(conn: AsyncConnection, transactions: list[Transaction]) -> None:
    """Append balanced transactions in one statement and move the cached balances with them."""
    rows: list[tuple[uuid.UUID, str, Decimal, str, str | None, datetime | None, uuid.UUID | None, str]] = []
    deltas: dict[str, Decimal] = {}
    for txn in transactions:
        if sum((e.amount for e in txn.entries), Decimal(0)) != 0:
            raise ValueError("a ledger transaction must balance")
        for e in txn.entries:
            rows.append(
                (txn.txn_id, e.ledger_account, e.amount, txn.kind, e.meter_id, e.period_start, txn.reverses, txn.memo)
            )
            deltas[e.ledger_account] = deltas.get(e.ledger_account, Decimal(0)) + e.amount
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        text(
            "INSERT INTO billing.ledger_entries (txn_id, ledger_account, amount, kind, meter_id, period_start, reverses, memo) "
            "SELECT * FROM unnest(CAST(:t AS uuid[]), CAST(:a AS text[]), CAST(:m AS numeric[]), CAST(:k AS text[]), "
            "CAST(:mt AS text[]), CAST(:p AS timestamptz[]), CAST(:r AS uuid[]), CAST(:memo AS text[]))"
        ),
        {
            "t": list(columns[0]),
            "a": list(columns[1]),
            "m": list(columns[2]),
            "k": list(columns[3]),
            "mt": list(columns[4]),
            "p": list(columns[5]),
            "r": list(columns[6]),
            "memo": list(columns[7]),
        },
    )
    await add_to_balances(conn, deltas)


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


async def balances(conn: AsyncConnection, ledger_accounts: list[str]) -> dict[str, Decimal]:
    """Cached balances of ledger accounts (absent accounts are zero)."""
    rows = await conn.execute(
        text("SELECT ledger_account, balance FROM billing.balances WHERE ledger_account = ANY(:a)"),
        {"a": ledger_accounts},
    )
    found = {row.ledger_account: row.balance for row in rows}
    return {a: found.get(a, Decimal("0.00")) for a in ledger_accounts}


def purses_of(account_id: str) -> list[str]:
    """Every ledger account a household's money can sit in: shared or per-utility purse, paid or subsidy."""
    purses = [purse(account_id, None), *(purse(account_id, u) for u in Utility)]
    return purses + [subsidy(p) for p in purses]
