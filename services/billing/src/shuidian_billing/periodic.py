"""The monthly run of an estate: fixed service fees and the shared-area (公摊) allocation.

Once per estate and local month, after the month has ended:
  * every household whose lease was active on the month's first day pays each fixed monthly
    charge (`{"kind": "fixed"}` component) of the tariff version in force then;
  * the month's consumption of the estate's common meters (stairwell lights, lifts, pumps),
    posted to the pool `shared:<estate>`, is allocated to the households leasing during the
    month — by room area or equally, as the estate says — in whole fen that sum exactly to the
    pool's cost (largest-remainder), and moved from the pool to each household.
Both draw on subsidy credit first, like consumption. A run is recorded and never repeated.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing import store
from shuidian_billing.billing import Billing, BillingError
from shuidian_billing.domain import ledger, tariffs
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME, CalendarPeriod, period_end
from shuidian_kit.errors import Conflict, NotFound
from shuidian_shared.messages import Utility


class PeriodRuns:
    def __init__(self, engine: AsyncEngine, billing: Billing) -> None:
        self._engine = engine
        self._billing = billing

    async def run_month(self, estate_id: str, year: int, month: int) -> dict[str, Any]:
        """Post the month's fixed fees and 公摊 for an estate (idempotent: a second run returns the first)."""
        start = datetime(year, month, 1, tzinfo=CHINA_STANDARD_TIME).astimezone(UTC)
        end = period_end(CalendarPeriod.MONTH, start, CHINA_STANDARD_TIME)
        if end > datetime.now(UTC):
            raise Conflict("the month has not ended yet", code="month_open")
        # Every common-meter hour of the month must be on the ledger before it is shared out.
        await self._billing.flush(before=end)
        async with self._engine.begin() as conn:
            estate = (
                await conn.execute(
                    text("SELECT shared_basis FROM billing.estates WHERE estate_id = :e FOR UPDATE"), {"e": estate_id}
                )
            ).first()
            if estate is None:
                raise NotFound(f"no estate {estate_id}")
            done = (
                await conn.execute(
                    text("SELECT summary FROM billing.period_runs WHERE estate_id = :e AND month = :m"),
                    {"e": estate_id, "m": start.astimezone(CHINA_STANDARD_TIME).date()},
                )
            ).first()
            if done is not None:
                return {**done.summary, "replayed": True}
            leases = (
                await conn.execute(
                    text(
                        "SELECT l.account_id, l.starts_at, r.area_m2 FROM billing.leases l "
                        "JOIN billing.rooms r USING (room_id) JOIN billing.floors f USING (floor_id) "
                        "JOIN billing.buildings b USING (building_id) WHERE b.estate_id = :e "
                        "AND l.starts_at < :end AND (l.ends_at IS NULL OR l.ends_at > :start) ORDER BY l.account_id"
                    ),
                    {"e": estate_id, "start": start, "end": end},
                )
            ).all()
            pricers = await self._billing.pricers(conn)
            charges: list[tuple[str, Utility, str, Decimal, str]] = []  # account, utility, kind, amount, memo
            for lease in leases:
                if lease.starts_at > start:
                    continue  # moved in during the month: no fee for a month not leased from its first day
                for utility, pricer in pricers.items():
                    versions = [v.domain for v in pricer.versions]
                    for line in tariffs.fixed_charge_lines(versions, utility, year, month):
                        charges.append(
                            (lease.account_id, utility, "fixed_fee", line.amount, f"{line.component} {line.label}")
                        )
            pool = f"shared:{estate_id}"
            shared: dict[str, dict[str, Decimal]] = {}
            for row in await conn.execute(
                text(
                    "SELECT e2.ledger_account AS revenue, sum(e1.amount) AS cost FROM billing.ledger_entries e1 "
                    "JOIN billing.ledger_entries e2 ON e2.txn_id = e1.txn_id AND e2.ledger_account LIKE 'revenue:%' "
                    "WHERE e1.ledger_account = :p AND e1.period_start >= :start AND e1.period_start < :end "
                    "GROUP BY e2.ledger_account"
                ),
                {"p": pool, "start": start, "end": end},
            ):
                cost = -row.cost
                households = {lease.account_id: lease.area_m2 for lease in leases}
                if cost > 0 and households:
                    utility = Utility(row.revenue.removeprefix("revenue:"))
                    parts = tariffs.allocate_shared_cost(cost, households, tariffs.SharedBasis(estate.shared_basis))
                    shared[utility.value] = {k: v for k, v in parts.items() if v}
                    for account, amount in shared[utility.value].items():
                        charges.append((account, utility, "shared_area", amount, f"公摊 {year:04d}-{month:02d}"))
            accounts = sorted({c[0] for c in charges})
            shared_mode = await self._billing.balance_modes(conn, accounts)
            purses = {(a, u): store.purse(a, None if shared_mode.get(a, True) else u) for a, u, _, _, _ in charges}
            subsidy_left = await store.balances(conn, sorted({store.subsidy(p) for p in purses.values()}))
            postings: list[store.Transaction] = []
            for account, utility, kind, amount, memo in charges:
                purse = purses[(account, utility)]
                split = ledger.split_charge(amount, subsidy_left[store.subsidy(purse)])
                subsidy_left[store.subsidy(purse)] -= split.from_subsidy
                counter = pool if kind == "shared_area" else ledger.FEE_REVENUE
                entries = [
                    e
                    for e in (
                        store.Entry(purse, -split.from_paid, None, start),
                        store.Entry(store.subsidy(purse), -split.from_subsidy, None, start),
                    )
                    if e.amount
                ]
                postings.append(store.Transaction(kind, [*entries, store.Entry(counter, amount, None, start)], memo))
            await store.post_many(conn, postings)
            summary = {
                "estate_id": estate_id,
                "month": f"{year:04d}-{month:02d}",
                "fixed_fees": {
                    a: str(sum(c[3] for c in charges if c[0] == a and c[2] == "fixed_fee")) for a in accounts
                },
                "shared_area": {u: {a: str(v) for a, v in parts.items()} for u, parts in shared.items()},
            }
            await conn.execute(
                text("INSERT INTO billing.period_runs (estate_id, month, summary) VALUES (:e, :m, CAST(:s AS jsonb))"),
                {"e": estate_id, "m": start.astimezone(CHINA_STANDARD_TIME).date(), "s": json.dumps(summary)},
            )
            await self._billing.evaluate_levels(conn, set(accounts))
        self._billing.notify()
        return {**summary, "replayed": False}


def parse_month(value: str) -> tuple[int, int]:
    """'2026-11' → (2026, 11)."""
    try:
        year, month = (int(part) for part in value.split("-"))
        datetime(year, month, 1)  # noqa: DTZ001 — only validates the calendar month
    except ValueError as err:
        raise BillingError(f"not a month (YYYY-MM): {value}", code="invalid_month", status_code=422) from err
    return year, month
