"""Money an operator or a channel moves on an account: idempotent top-ups, subsidies (补贴), and
corrections (冲正) that reverse a ledger transaction once, with who and why."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.levels import BalanceLevels
from shuidian_billing.domain import ledger
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import Utility, utcnow

# The ledger account each payment channel's money comes in through.
CHANNEL_ACCOUNTS = {channel.value: ledger.channel_account(channel) for channel in ledger.TopupChannel}


class Credits:
    """Top-ups, subsidies and reversals, each in one transaction that re-evaluates balance levels."""

    def __init__(
        self, engine: AsyncEngine, outbox: Outbox, levels: BalanceLevels, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._levels = levels
        self._clock = clock

    async def top_up(
        self,
        account_id: str,
        amount: Decimal,
        channel: str,
        reference: str | None,
        idempotency_key: str,
        *,
        utility: Utility | None = None,
    ) -> dict[str, Any]:
        """Credit an account once per idempotency key; a replay returns the original payment."""
        if amount <= 0:
            raise BillingError("amount must be positive", code="invalid_amount", status_code=422)
        if channel not in CHANNEL_ACCOUNTS:
            raise BillingError(f"unknown channel {channel}", code="invalid_channel", status_code=422)
        content = f"{account_id}|{amount}|{channel}|{reference or ''}" + (f"|{utility.value}" if utility else "")
        fingerprint = hashlib.sha256(content.encode()).hexdigest()
        async with self._engine.begin() as conn:
            # Serialise concurrent retries of the same key before looking for an earlier result.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": idempotency_key})
            existing = (
                await conn.execute(
                    text("SELECT * FROM billing.payments WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
            ).first()
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different payment", code="idempotency_conflict")
                return {**_payment_out(existing._asdict()), "replayed": True}
            purse = await self._levels.purse_of(conn, account_id, utility)
            txn_id = uuid.uuid4()
            posting = ledger.topup_posting(
                str(txn_id),
                household=purse,
                amount=amount,
                channel=ledger.TopupChannel(channel),
                occurred_at=self._clock(),
            )
            memo = f"{channel} {reference or ''}".strip()
            await store.post_many(conn, [store.transaction_of(posting, txn_id, memo=memo)])
            balance = (await store.balances(conn, [purse]))[purse]
            payment = {
                "payment_id": uuid.uuid4(),
                "account_id": account_id,
                "channel": channel,
                "amount": amount,
                "reference": reference,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "txn_id": txn_id,
                "balance_after": balance,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.payments (payment_id, account_id, channel, amount, reference, idempotency_key, "
                    "fingerprint, txn_id, balance_after) VALUES (:payment_id, :account_id, :channel, :amount, :reference, "
                    ":idempotency_key, :fingerprint, :txn_id, :balance_after)"
                ),
                payment,
            )
            await self._levels.evaluate_levels(conn, {account_id})
        self._outbox.notify()
        return {**_payment_out(payment), "replayed": False}

    async def grant_subsidy(
        self, account_id: str, amount: Decimal, program: str, idempotency_key: str, *, utility: Utility | None = None
    ) -> dict[str, Any]:
        """Credit subsidy (补贴) from the subsidy fund, once per key; charges draw on it before paid credit."""
        if amount <= 0:
            raise BillingError("amount must be positive", code="invalid_amount", status_code=422)
        fingerprint = hashlib.sha256(f"{account_id}|{amount}|{program}|{utility or ''}".encode()).hexdigest()
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": idempotency_key})
            existing = (
                await conn.execute(
                    text("SELECT * FROM billing.subsidies WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
            ).first()
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different subsidy", code="idempotency_conflict")
                return {**_subsidy_out(existing._asdict()), "replayed": True}
            purse = await self._levels.purse_of(conn, account_id, utility)
            txn_id = uuid.uuid4()
            posting = ledger.subsidy_posting(str(txn_id), household=purse, amount=amount, occurred_at=self._clock())
            await store.post_many(conn, [store.transaction_of(posting, txn_id, memo=program)])
            row = {
                "subsidy_id": uuid.uuid4(),
                "account_id": account_id,
                "amount": amount,
                "program": program,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "txn_id": txn_id,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.subsidies (subsidy_id, account_id, amount, program, idempotency_key, fingerprint, "
                    "txn_id) VALUES (:subsidy_id, :account_id, :amount, :program, :idempotency_key, :fingerprint, :txn_id)"
                ),
                row,
            )
            await self._levels.evaluate_levels(conn, {account_id})
        self._outbox.notify()
        return {**_subsidy_out(row), "replayed": False}

    # --- corrections (冲正) ----------------------------------------------------------------------

    async def reverse(self, txn_id: uuid.UUID, operator: str, reason: str) -> dict[str, Any]:
        """Post the reversing entry of a ledger transaction, once, with who and why."""
        if not operator.strip() or not reason.strip():
            raise BillingError("an operator and a reason are required", code="invalid_correction", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"reverse:{txn_id}"})
            entries = (
                await conn.execute(
                    text(
                        "SELECT ledger_account, amount, kind, meter_id, period_start FROM billing.ledger_entries "
                        "WHERE txn_id = :t ORDER BY entry_id"
                    ),
                    {"t": txn_id},
                )
            ).all()
            if not entries:
                raise NotFound(f"no ledger transaction {txn_id}")
            if entries[0].kind == "reversal":
                raise BillingError("a reversal is not reversed; post a new entry", code="invalid_correction")
            if (
                await conn.execute(text("SELECT 1 FROM billing.corrections WHERE reverses = :t"), {"t": txn_id})
            ).first() is not None:
                raise Conflict(f"transaction {txn_id} is already reversed", code="already_reversed")
            original = ledger.Posting(
                str(txn_id),
                ledger.PostingKind(entries[0].kind),
                tuple(ledger.PostingLine(e.ledger_account, e.amount) for e in entries),
                self._clock(),
            )
            reversal = uuid.uuid4()
            negated = ledger.reversal_of(
                original, operator=operator, reason=reason, occurred_at=self._clock(), txn_id=str(reversal)
            )
            # Each line keeps its meter and period (the domain's lines are the original's, in order, negated).
            lines = [
                store.Entry(line.account, line.amount, e.meter_id, e.period_start)
                for e, line in zip(entries, negated.lines, strict=True)
            ]
            transaction = store.Transaction(
                negated.kind.value, lines, memo=f"冲正 {reason}", reverses=txn_id, txn_id=reversal
            )
            await store.post_many(conn, [transaction])
            await conn.execute(
                text("INSERT INTO billing.corrections (txn_id, reverses, operator, reason) VALUES (:t, :r, :o, :why)"),
                {"t": reversal, "r": txn_id, "o": operator, "why": reason},
            )
            households = {e.ledger_account.split(":")[1] for e in entries if e.ledger_account.startswith("household:")}
            await self._levels.evaluate_levels(conn, households)
        self._outbox.notify()
        return {"txn_id": reversal, "reverses": txn_id, "operator": operator, "reason": reason}

    async def corrections(self, account_id: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.txn_id, c.reverses, c.operator, c.reason, c.created_at FROM billing.corrections c "
                    "WHERE CAST(:a AS text) IS NULL OR EXISTS (SELECT 1 FROM billing.ledger_entries e WHERE e.txn_id = c.txn_id "
                    "AND e.ledger_account LIKE 'household:' || :a || '%') ORDER BY c.created_at DESC LIMIT :n"
                ),
                {"a": account_id, "n": limit},
            )
            return [r._asdict() for r in rows]


def _payment_out(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("payment_id", "account_id", "amount", "channel", "reference", "balance_after", "txn_id")
    return {k: row[k] for k in keys}


def _subsidy_out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("subsidy_id", "account_id", "amount", "program", "txn_id")}
