"""Posting hourly accruals to the ledger: the accruals of every hour that began before the cut-off go
through the domain's `HourlyAccrual` (whole fen posted, the rest carried to the meter's next hour),
and its postings, carries and posted hours are written in the same transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.levels import balance_modes, purse_for
from shuidian_billing.adapters.sql import FLUSH_LOCK
from shuidian_billing.domain import ledger
from shuidian_billing.domain.meters import common_pool, hour_start, is_common
from shuidian_billing.settings import BillingSettings
from shuidian_shared.messages import Utility

log = logging.getLogger(__name__)


class LedgerPoster:
    """Posts ended hours' accruals, hourly in the background or on demand (`flush`)."""

    def __init__(self, engine: AsyncEngine, settings: BillingSettings) -> None:
        self._engine = engine
        self._settings = settings

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval_seconds)
            try:
                await self.flush(before=hour_start(datetime.now(UTC)))
            except Exception:
                log.exception("posting accruals failed; will retry")

    async def flush(self, *, before: datetime) -> int:
        """Post every accrual of an hour that began before `before`: one ledger transaction per meter-hour."""
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FLUSH_LOCK})
            rows = (
                await conn.execute(
                    text(
                        "DELETE FROM billing.accruals WHERE hour < :b "
                        "RETURNING meter_id, hour, account_id, utility, amount"
                    ),
                    {"b": before},
                )
            ).all()
            if not rows:
                return 0
            carried = {
                (row.meter_id, row.account_id): row
                for row in await conn.execute(
                    text(
                        "SELECT meter_id, account_id, utility, remainder, posted_through FROM billing.carries "
                        "WHERE meter_id = ANY(:m) ORDER BY meter_id, account_id FOR UPDATE"
                    ),
                    {"m": sorted({r.meter_id for r in rows})},
                )
            }
            shared = await balance_modes(conn, sorted({r.account_id for r in rows if not is_common(r.account_id)}))
            # The ledger account each (meter, owner) is charged on: a household's purse or an estate's pool.
            charged: dict[tuple[str, str], tuple[str, str]] = {}
            for row in rows:
                account = row.account_id
                payer = common_pool(account) if is_common(account) else purse_for(account, Utility(row.utility), shared)
                charged[(row.meter_id, account)] = (payer, row.utility)
            accrual = ledger.HourlyAccrual(
                {
                    (payer, meter): carried[(meter, owner)].remainder
                    for (meter, owner), (payer, _) in charged.items()
                    if (meter, owner) in carried
                },
                {
                    (payer, meter): carried[(meter, owner)].posted_through
                    for (meter, owner), (payer, _) in charged.items()
                    if (meter, owner) in carried and carried[(meter, owner)].posted_through is not None
                },
            )
            for row in rows:
                payer, utility = charged[(row.meter_id, row.account_id)]
                revenue = ledger.revenue_account(Utility(utility))
                accrual.add(household=payer, meter_id=row.meter_id, revenue=revenue, at=row.hour, amount=row.amount)
            purses = sorted({payer for (_, owner), (payer, _) in charged.items() if not is_common(owner)})
            subsidy = await store.balances(conn, [ledger.subsidy_account(purse) for purse in purses])
            postings = accrual.flush(
                before, subsidy_available={purse: subsidy[ledger.subsidy_account(purse)] for purse in purses}
            )
            await store.post_many(
                conn,
                [
                    store.transaction_of(p, uuid.uuid4(), meter_id=p.meta["meter_id"], period_start=p.occurred_at)
                    for p in postings
                ],
            )
            keys = sorted(charged)
            remainders = accrual.carries
            posted_through = accrual.flushed_through
            await conn.execute(
                text(
                    "INSERT INTO billing.carries (meter_id, account_id, utility, remainder, posted_through) "
                    "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:a AS text[]), CAST(:u AS text[]), "
                    "CAST(:r AS numeric[]), CAST(:p AS timestamptz[])) "
                    "ON CONFLICT (meter_id, account_id) DO UPDATE SET remainder = EXCLUDED.remainder, "
                    "posted_through = EXCLUDED.posted_through"
                ),
                {
                    "m": [meter for meter, _ in keys],
                    "a": [owner for _, owner in keys],
                    "u": [charged[key][1] for key in keys],
                    "r": [remainders[(charged[key][0], key[0])] for key in keys],
                    "p": [posted_through[(charged[key][0], key[0])] for key in keys],
                },
            )
        return len(postings)
