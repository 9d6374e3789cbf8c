"""The monthly run of an estate: fixed service fees pro-rated by leased days, and the shared-area
(公摊) allocation.

Once per estate and local month, after the month has ended:
  * every household pays each fixed monthly charge (`{"kind": "fixed"}` component) of the tariff
    version in force on the month's first day, pro rata to the local days its lease covered in the
    month (a household moving in on the 20th of a 31-day month pays 12/31). A lease's share is
    computed exactly (to 10 decimals), posted in whole fen rounded toward zero, and the cut-off
    remainder is carried to the household's next fee of the same component (`fee_carries`) — the
    ledger's one rounding rule (`shuidian_shared.money.split_cents`). What is posted per lease and
    month is recorded in `fee_postings`: a move-out settlement posts the months of the lease not
    run yet (the move-out month's part at move-out), and the run then skips them (never charged
    twice);
  * the month's consumption of the estate's common meters (stairwell lights, lifts, pumps),
    posted to the pool `shared:<estate>`, is allocated to the households leasing during the
    month — by room area × leased days or by leased days alone, as the estate says — in whole fen
    that sum exactly to the pool's cost (largest-remainder), and moved from the pool to each
    household. A household whose lease was settled at move-out is not charged after its refund:
    its part stays on the pool (borne by the estate, reported as `shared_area_waived`).
Both draw on subsidy credit first, like consumption. A run is recorded and never repeated.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.levels import balance_modes, purse_for
from shuidian_billing.adapters.tariffs import lease_contexts, load_pricers
from shuidian_billing.domain import ledger, tariffs
from shuidian_billing.domain.fees import days_in_month, leased_days, month_start, prorate_fee, shared_area_weights
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME, CalendarPeriod, period_end
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_shared.messages import Utility

# --- posting --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseTerm:
    lease_id: str
    account_id: str
    move_in: date
    move_out: date | None


@dataclass(frozen=True, slots=True)
class Charge:
    account_id: str
    utility: Utility
    kind: str  # fixed_fee | shared_area
    amount: Decimal
    memo: str
    counter: str  # the ledger account credited


async def post_charges(conn: AsyncConnection, charges: Sequence[Charge], at: datetime) -> list[Any]:
    """Debit each charge from the household's purse (subsidy first: the domain's `charge_posting`), one
    ledger transaction each.

    Returns each charge's transaction id (None for a zero charge, which posts nothing).
    """
    accounts = sorted({c.account_id for c in charges})
    shared_mode = await balance_modes(conn, accounts)
    purses = {(c.account_id, c.utility): purse_for(c.account_id, c.utility, shared_mode) for c in charges}
    subsidy_left = await store.balances(conn, sorted({ledger.subsidy_account(p) for p in purses.values()}))
    postings: list[store.Transaction] = []
    txn_ids: list[Any] = []
    for charge in charges:
        if not charge.amount:
            txn_ids.append(None)
            continue
        purse = purses[(charge.account_id, charge.utility)]
        txn_id = uuid.uuid4()
        posting = ledger.charge_posting(
            str(txn_id),
            household=purse,
            revenue=charge.counter,
            amount=charge.amount,
            occurred_at=at,
            subsidy_available=subsidy_left[ledger.subsidy_account(purse)],
            kind=ledger.PostingKind(charge.kind),
        )
        subsidy_left[ledger.subsidy_account(purse)] += posting.amount_for(ledger.subsidy_account(purse))
        postings.append(store.transaction_of(posting, txn_id, memo=charge.memo, period_start=at))
        txn_ids.append(txn_id)
    await store.post_many(conn, postings)
    return txn_ids


async def post_fixed_fees(
    conn: AsyncConnection,
    leases: Sequence[LeaseTerm],
    year: int,
    month: int,
    posted_by: Literal["monthly_run", "settlement"],
) -> list[dict[str, Any]]:
    """Post the leases' pro-rated fixed fees of a local month, except what was posted for them before.

    Returns one line per lease, utility and component posted now (amount may be 0.00 when the
    share is under a fen: it is then only carried). The caller evaluates balance levels.
    """
    if not leases:
        return []
    month_days = days_in_month(year, month)
    first = date(year, month, 1)
    done = {
        (r.lease_id, r.utility, r.component)
        for r in await conn.execute(
            text(
                "SELECT lease_id, utility, component FROM billing.fee_postings WHERE lease_id = ANY(:l) AND month = :m"
            ),
            {"l": [lease.lease_id for lease in leases], "m": first},
        )
    }
    carries = {
        (r.account_id, r.utility, r.component): r.remainder
        for r in await conn.execute(
            text(
                "SELECT account_id, utility, component, remainder FROM billing.fee_carries WHERE account_id = ANY(:a) "
                "ORDER BY account_id, utility, component FOR UPDATE"
            ),
            {"a": sorted({lease.account_id for lease in leases})},
        )
    }
    pricers = await load_pricers(conn)
    contexts = await lease_contexts(conn, [lease.lease_id for lease in leases])  # each lease's plan (docs/tariffs.md)
    lines: list[dict[str, Any]] = []
    charges: list[Charge] = []
    for lease in sorted(leases, key=lambda term: term.lease_id):
        days = leased_days(lease.move_in, lease.move_out, year, month)
        if days == 0:
            continue
        for utility, pricer in pricers.items():
            versions = [v.domain for v in pricer.fee_versions(contexts.get(lease.lease_id), month_start(year, month))]
            for line in tariffs.fixed_charge_lines(versions, utility, year, month):
                if (lease.lease_id, utility.value, line.component) in done:
                    continue
                key = (lease.account_id, utility.value, line.component)
                fee = prorate_fee(line.amount, days, month_days, carries.get(key, Decimal(0)))
                carries[key] = fee.remainder
                memo = f"{line.component} {line.label}" + ("" if days == month_days else f" {days}/{month_days}天 days")
                charges.append(Charge(lease.account_id, utility, "fixed_fee", fee.posted, memo, ledger.FEE_REVENUE))
                lines.append(
                    {
                        "lease_id": lease.lease_id,
                        "account_id": lease.account_id,
                        "utility": utility.value,
                        "component": line.component,
                        "month": f"{year:04d}-{month:02d}",
                        "days": days,
                        "days_in_month": month_days,
                        "exact": fee.share,
                        "amount": fee.posted,
                    }
                )
    if not lines:
        return []
    txn_ids = await post_charges(conn, charges, month_start(year, month))
    for posted, txn_id in zip(lines, txn_ids, strict=True):
        posted["txn_id"] = txn_id
    await conn.execute(
        text(
            "INSERT INTO billing.fee_postings (lease_id, month, utility, component, account_id, days, days_in_month, "
            "exact, amount, txn_id, posted_by) SELECT u.*, CAST(:by AS text) FROM unnest(CAST(:l AS text[]), "
            "CAST(:m AS date[]), CAST(:u AS text[]), CAST(:c AS text[]), CAST(:a AS text[]), CAST(:d AS int[]), "
            "CAST(:dm AS int[]), CAST(:x AS numeric[]), CAST(:p AS numeric[]), CAST(:t AS uuid[])) AS u"
        ),
        {
            "l": [x["lease_id"] for x in lines],
            "m": [first] * len(lines),
            "u": [x["utility"] for x in lines],
            "c": [x["component"] for x in lines],
            "a": [x["account_id"] for x in lines],
            "d": [x["days"] for x in lines],
            "dm": [month_days] * len(lines),
            "x": [x["exact"] for x in lines],
            "p": [x["amount"] for x in lines],
            "t": [x["txn_id"] for x in lines],
            "by": posted_by,
        },
    )
    keys = sorted(carries)
    await conn.execute(
        text(
            "INSERT INTO billing.fee_carries (account_id, utility, component, remainder) "
            "SELECT * FROM unnest(CAST(:a AS text[]), CAST(:u AS text[]), CAST(:c AS text[]), CAST(:r AS numeric[])) "
            "ON CONFLICT (account_id, utility, component) DO UPDATE SET remainder = EXCLUDED.remainder"
        ),
        {
            "a": [k[0] for k in keys],
            "u": [k[1] for k in keys],
            "c": [k[2] for k in keys],
            "r": [carries[k] for k in keys],
        },
    )
    return lines


class PeriodRuns:
    def __init__(self, engine: AsyncEngine, billing: Billing) -> None:
        self._engine = engine
        self._billing = billing

    async def run_month(self, estate_id: str, year: int, month: int) -> dict[str, Any]:
        """Post the month's fixed fees and 公摊 for an estate (idempotent: a second run returns the first)."""
        start = month_start(year, month)
        end = period_end(CalendarPeriod.MONTH, start, CHINA_STANDARD_TIME)
        if end > datetime.now(UTC):
            raise Conflict("the month has not ended yet", code="month_open")
        # Every common-meter hour of the month must be on the ledger before it is shared out.
        await self._billing.poster.flush(before=end)
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
                    {"e": estate_id, "m": date(year, month, 1)},
                )
            ).first()
            if done is not None:
                return {**done.summary, "replayed": True}
            leases = (
                await conn.execute(
                    text(
                        "SELECT l.lease_id, l.account_id, l.move_in, l.move_out, r.area_m2 FROM billing.leases l "
                        "JOIN billing.rooms r USING (room_id) JOIN billing.floors f USING (floor_id) "
                        "JOIN billing.buildings b USING (building_id) WHERE b.estate_id = :e "
                        "AND l.starts_at < :end AND (l.ends_at IS NULL OR l.ends_at > :start) ORDER BY l.account_id"
                    ),
                    {"e": estate_id, "start": start, "end": end},
                )
            ).all()
            fees = await post_fixed_fees(
                conn,
                [LeaseTerm(lease.lease_id, lease.account_id, lease.move_in, lease.move_out) for lease in leases],
                year,
                month,
                "monthly_run",
            )
            pool = f"shared:{estate_id}"
            households = shared_area_weights(
                [(lease.account_id, lease.area_m2, lease.move_in, lease.move_out) for lease in leases],
                tariffs.SharedBasis(estate.shared_basis),
                year,
                month,
            )
            # A household settled at move-out has had its paid credit refunded: its part is left on the
            # pool (borne by the estate, reported), never charged after the settlement nor moved to others.
            settled = set(
                (
                    await conn.execute(
                        text(
                            "SELECT l.account_id FROM billing.lease_settlements s JOIN billing.leases l USING (lease_id) "
                            "WHERE s.lease_id = ANY(:l)"
                        ),
                        {"l": [lease.lease_id for lease in leases]},
                    )
                ).scalars()
            )
            shared: dict[str, dict[str, Decimal]] = {}
            waived: dict[str, dict[str, Decimal]] = {}
            charges: list[Charge] = []
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
                if cost > 0 and households:
                    utility = Utility(row.revenue.removeprefix("revenue:"))
                    parts = tariffs.allocate_shared_cost(cost, households, tariffs.SharedBasis.AREA)
                    shared[utility.value] = {k: v for k, v in parts.items() if v and k not in settled}
                    waived[utility.value] = {k: v for k, v in parts.items() if v and k in settled}
                    for account, amount in shared[utility.value].items():
                        charges.append(
                            Charge(account, utility, "shared_area", amount, f"公摊 {year:04d}-{month:02d}", pool)
                        )
            await post_charges(conn, charges, start)
            accounts = sorted({f["account_id"] for f in fees} | {c.account_id for c in charges})
            summary = {
                "estate_id": estate_id,
                "month": f"{year:04d}-{month:02d}",
                "fixed_fees": {
                    a: str(sum((f["amount"] for f in fees if f["account_id"] == a), Decimal("0.00"))) for a in accounts
                },
                "fixed_fee_lines": [
                    {k: str(v) if isinstance(v, Decimal) else v for k, v in f.items() if k != "txn_id"} for f in fees
                ],
                "shared_area": {u: {a: str(v) for a, v in parts.items()} for u, parts in shared.items()},
                "shared_area_waived": {
                    u: {a: str(v) for a, v in parts.items()} for u, parts in waived.items() if parts
                },
            }
            await conn.execute(
                text("INSERT INTO billing.period_runs (estate_id, month, summary) VALUES (:e, :m, CAST(:s AS jsonb))"),
                {"e": estate_id, "m": date(year, month, 1), "s": json.dumps(summary)},
            )
            await self._billing.levels.evaluate_levels(conn, set(accounts))
        self._billing.outbox.notify()
        return {**summary, "replayed": False}


def parse_month(value: str) -> tuple[int, int]:
    """'2026-11' → (2026, 11)."""
    try:
        year, month = (int(part) for part in value.split("-"))
        datetime(year, month, 1)  # noqa: DTZ001 — only validates the calendar month
    except ValueError as err:
        raise BillingError(f"not a month (YYYY-MM): {value}", code="invalid_month", status_code=422) from err
    return year, month
