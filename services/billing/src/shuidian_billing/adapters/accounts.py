"""Accounts and meter bindings: set-up, the effective-dated binding of a meter, an account's balances
per purse and its ledger lines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.sql import decimals
from shuidian_billing.domain import BillingDomainError, ledger
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_shared.messages import Utility

# An account in one round trip: the account, its balance mode, the cached balances of every purse it
# may have and its unposted charges (accruals and carried remainders) per utility.
ACCOUNT_SQL = """
SELECT a.name, a.estate_id, a.level, a.sequence, a.grace_credit, coalesce(e.shared_balance, true) AS shared,
       (SELECT coalesce(json_object_agg(ledger_account, balance::text), '{}') FROM billing.balances
        WHERE ledger_account = ANY(:names)) AS balances,
       (SELECT coalesce(json_object_agg(utility, owed::text), '{}') FROM (
            SELECT utility, sum(amount) AS owed FROM (
                SELECT utility, amount FROM billing.accruals WHERE account_id = :a
                UNION ALL SELECT utility, remainder FROM billing.carries WHERE account_id = :a) o
            GROUP BY utility) x) AS owed
FROM billing.accounts a LEFT JOIN billing.estates e USING (estate_id) WHERE a.account_id = :a
"""


class Accounts:
    """Set-up and reads of accounts and their meter bindings."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put_account(
        self,
        account_id: str,
        name: str,
        low_1: Decimal,
        low_2: Decimal,
        grace: Decimal,
        estate_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Create or update an account; its thresholds must be ones the balance levels can use."""
        try:
            if low_2 < 0:
                raise BillingDomainError("low_2 cannot be negative")
            ledger.BalanceThresholds(level1=low_1, level2=low_2, grace_credit=grace)
        except BillingDomainError as err:
            raise BillingError(
                f"余额阈值须满足 low_1 > low_2 ≥ 0 且 low_2 > −grace_credit · {err}",
                code="invalid_thresholds",
                status_code=422,
            ) from err
        statement = text(
            "INSERT INTO billing.accounts (account_id, name, low_1, low_2, grace_credit, estate_id) "
            "VALUES (:a, :n, :l1, :l2, :g, :e) ON CONFLICT (account_id) DO UPDATE SET name = EXCLUDED.name, "
            "low_1 = EXCLUDED.low_1, low_2 = EXCLUDED.low_2, grace_credit = EXCLUDED.grace_credit, "
            "estate_id = coalesce(EXCLUDED.estate_id, billing.accounts.estate_id)"
        )
        params = {"a": account_id, "n": name, "l1": low_1, "l2": low_2, "g": grace, "e": estate_id}
        if conn is not None:
            await conn.execute(statement, params)
            return
        async with self._engine.begin() as own:
            if (
                estate_id is not None
                and (
                    await own.execute(text("SELECT 1 FROM billing.estates WHERE estate_id = :e"), {"e": estate_id})
                ).first()
                is None
            ):
                raise NotFound(f"no estate {estate_id}")
            await own.execute(statement, params)

    async def bind_meter(
        self, meter_id: str, account_id: str, utility: Utility, effective_from: datetime | None = None
    ) -> None:
        """Bind a meter to an account from `effective_from` on (from the first reading if it was never bound)."""
        async with self._engine.begin() as conn:
            if (
                await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first() is None:
                raise NotFound(f"no account {account_id}")
            await self.rebind(conn, meter_id, utility, effective_from, account_id=account_id)

    async def rebind(
        self,
        conn: AsyncConnection,
        meter_id: str,
        utility: Utility,
        effective_from: datetime | None,
        *,
        account_id: str | None = None,
        room_id: str | None = None,
        estate_id: str | None = None,
    ) -> None:
        """Close the meter's open binding at `effective_from` and open the new one (a no-op if unchanged)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"binding:{meter_id}"})
        rows = (
            await conn.execute(
                text(
                    "SELECT binding_id, account_id, room_id, estate_id, utility, valid_from, valid_to "
                    "FROM billing.meter_bindings WHERE meter_id = :m ORDER BY valid_from NULLS FIRST"
                ),
                {"m": meter_id},
            )
        ).all()
        current = next((r for r in rows if r.valid_to is None), None)
        if current is not None and (current.account_id, current.room_id, current.estate_id, current.utility) == (
            account_id,
            room_id,
            estate_id,
            utility.value,
        ):
            return
        start = effective_from
        if rows:
            start = start or datetime.now(UTC)
            latest = max((r.valid_from for r in rows if r.valid_from is not None), default=None)
            if latest is not None and start <= latest:
                raise Conflict(
                    f"meter {meter_id} already has a binding from {latest.isoformat()}; a new one must start later",
                    code="binding_order",
                )
            if current is not None:
                await conn.execute(
                    text("UPDATE billing.meter_bindings SET valid_to = :t WHERE binding_id = :b"),
                    {"t": start, "b": current.binding_id},
                )
        await conn.execute(
            text(
                "INSERT INTO billing.meter_bindings (meter_id, account_id, room_id, estate_id, utility, valid_from) "
                "VALUES (:m, :a, :r, :e, :u, :f)"
            ),
            {"m": meter_id, "a": account_id, "r": room_id, "e": estate_id, "u": utility.value, "f": start},
        )

    async def account(self, account_id: str) -> dict[str, Any]:
        """The account, its balance per purse (paid, subsidy, unposted charges, available), in one round trip."""
        async with self._engine.connect() as conn:
            acc = (
                await conn.execute(text(ACCOUNT_SQL), {"a": account_id, "names": store.purses_of(account_id)})
            ).first()
        if acc is None:
            raise NotFound(f"no account {account_id}")
        balances, owed = decimals(acc.balances), decimals(acc.owed)
        purses = [("all", None)] if acc.shared else [(u.value, u) for u in Utility]
        figures: list[dict[str, Any]] = []
        for name, utility in sorted(purses, key=lambda p: p[0]):
            purse = store.purse(account_id, utility)
            paid = balances.get(purse, Decimal("0.00"))
            subsidy = balances.get(store.subsidy(purse), Decimal("0.00"))
            utilities = [utility] if utility is not None else list(Utility)
            pending = sum((owed.get(u.value, Decimal(0)) for u in utilities), Decimal(0))
            figures.append(
                {
                    "purse": name,
                    "paid": paid,
                    "subsidy": subsidy,
                    "pending": pending,
                    "available": paid + subsidy - pending,
                }
            )
        paid_total = sum((f["paid"] for f in figures), Decimal("0.00"))
        subsidy_total = sum((f["subsidy"] for f in figures), Decimal("0.00"))
        return {
            "account_id": account_id,
            "name": acc.name,
            "estate_id": acc.estate_id,
            "balance": paid_total + subsidy_total,
            "paid_balance": paid_total,
            "subsidy_balance": subsidy_total,
            "available": sum((f["available"] for f in figures), Decimal(0)),
            "level": acc.level,
            "sequence": acc.sequence,
            "grace_credit": acc.grace_credit,
            "purses": figures,
        }

    async def ledger(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT entry_id, txn_id, ledger_account, amount, kind, meter_id, period_start, reverses, memo, "
                    "created_at FROM billing.ledger_entries WHERE ledger_account = :a OR ledger_account LIKE :p "
                    "ORDER BY entry_id DESC LIMIT :n"
                ),
                {"a": store.household(account_id), "p": store.household(account_id) + ":%", "n": limit},
            )
            return [r._asdict() for r in rows]
