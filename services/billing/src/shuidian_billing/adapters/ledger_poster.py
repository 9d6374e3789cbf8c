"""Posting hourly accruals to the ledger: every hour that ended becomes whole-fen postings, the
sub-fen remainder carried to the meter's next hour (the domain's `HourlyAccrual` decides)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.levels import balance_modes, purse_for
from shuidian_billing.adapters.sql import FLUSH_LOCK
from shuidian_billing.domain import ledger
from shuidian_billing.domain.meters import COMMON, hour_start
from shuidian_billing.settings import BillingSettings
from shuidian_shared.messages import Utility
from shuidian_shared.money import split_cents

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
        """Post every accrual of an hour that ended before `before`: one ledger transaction per meter-hour."""
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
            carries: dict[tuple[str, str], list[Any]] = {
                (row.meter_id, row.account_id): [row.remainder, row.utility, row.posted_through]
                for row in await conn.execute(
                    text(
                        "SELECT meter_id, account_id, utility, remainder, posted_through FROM billing.carries "
                        "WHERE meter_id = ANY(:m) ORDER BY meter_id, account_id FOR UPDATE"
                    ),
                    {"m": sorted({r.meter_id for r in rows})},
                )
            }
            households = sorted({r.account_id for r in rows if not r.account_id.startswith(COMMON)})
            shared = await balance_modes(conn, households)
            purses = {
                (r.account_id, r.utility): purse_for(r.account_id, Utility(r.utility), shared)
                for r in rows
                if not r.account_id.startswith(COMMON)
            }
            subsidy_left = await store.balances(conn, sorted({store.subsidy(p) for p in purses.values()}))
            postings: list[store.Transaction] = []
            for row in sorted(rows, key=lambda r: (r.meter_id, r.account_id, r.hour)):
                carry = carries.setdefault((row.meter_id, row.account_id), [Decimal(0), row.utility, None])
                fen, carry[0] = split_cents(carry[0] + row.amount)
                carry[2] = row.hour if carry[2] is None else max(carry[2], row.hour)
                if fen == 0:
                    continue
                revenue = store.Entry(ledger.revenue_account(Utility(row.utility)), fen, row.meter_id, row.hour)
                if row.account_id.startswith(COMMON):
                    pool = "shared:" + row.account_id.removeprefix(COMMON)
                    entries = [store.Entry(pool, -fen, row.meter_id, row.hour), revenue]
                else:
                    purse = purses[(row.account_id, row.utility)]
                    sub = store.subsidy(purse)
                    split = ledger.split_charge(fen, subsidy_left[sub])
                    subsidy_left[sub] -= split.from_subsidy
                    entries = [
                        e
                        for e in (
                            store.Entry(purse, -split.from_paid, row.meter_id, row.hour),
                            store.Entry(sub, -split.from_subsidy, row.meter_id, row.hour),
                        )
                        if e.amount
                    ] + [revenue]
                postings.append(store.Transaction("consumption", entries))
            await store.post_many(conn, postings)
            keys = sorted(carries)
            await conn.execute(
                text(
                    "INSERT INTO billing.carries (meter_id, account_id, utility, remainder, posted_through) "
                    "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:a AS text[]), CAST(:u AS text[]), "
                    "CAST(:r AS numeric[]), CAST(:p AS timestamptz[])) "
                    "ON CONFLICT (meter_id, account_id) DO UPDATE SET remainder = EXCLUDED.remainder, "
                    "posted_through = EXCLUDED.posted_through"
                ),
                {
                    "m": [k[0] for k in keys],
                    "a": [k[1] for k in keys],
                    "u": [carries[k][1] for k in keys],
                    "r": [carries[k][0] for k in keys],
                    "p": [carries[k][2] for k in keys],
                },
            )
        return len(postings)
