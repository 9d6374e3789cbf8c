"""The monthly report push: on the 1st (local), every household with use in the month just ended gets one
`MonthlyReportReady` on its account's topic, through the outbox.

Set-based, in batches of households: PostgreSQL reads each batch's month totals (the month's and the month
before's, from `monthly_profiles`), and one transaction per batch records the (month, household) pairs in
`monthly_pushes` and queues a notice for exactly those it inserted — so a rerun, a restart half-way or a
second replica sends nothing twice."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_insights.domain import monthly
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.contracts.insights import MonthlyReportReady, MonthUsage

log = logging.getLogger(__name__)

PUSHED = Counter("insights_monthly_reports_pushed_total", "monthly report notices queued (one per household-month)")
BATCH = 1_000


class MonthlyPush:
    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        source: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._source = source
        self._clock = clock

    async def push(self, month: str) -> int:
        """Queue the notice of every household with use in `month` not sent yet; how many were queued."""
        previous = monthly.previous_month(month)
        after = ""
        queued = 0
        while True:
            async with self._engine.begin() as conn:
                households = (
                    await conn.execute(
                        text(
                            "SELECT account_id, tenant_id, estate_id, room_id FROM insights.households h "
                            "WHERE account_id > :after AND NOT EXISTS (SELECT 1 FROM insights.monthly_pushes x "
                            "WHERE x.month = :month AND x.account_id = h.account_id) ORDER BY account_id LIMIT :n"
                        ),
                        {"after": after, "month": month, "n": BATCH},
                    )
                ).all()
                if not households:
                    break
                after = households[-1].account_id
                rows = await conn.execute(
                    text(
                        "SELECT m.account_id, m.utility, sum(p.total) AS quantity, sum(q.total) AS previous "
                        "FROM insights.household_meters m "
                        "JOIN insights.monthly_profiles p ON p.meter_id = m.meter_id AND p.month = :month "
                        "LEFT JOIN insights.monthly_profiles q ON q.meter_id = m.meter_id AND q.month = :previous "
                        "WHERE m.account_id = ANY(:accounts) GROUP BY 1, 2 ORDER BY 1, 2"
                    ),
                    {"month": month, "previous": previous, "accounts": [h.account_id for h in households]},
                )
                usage: dict[str, list[monthly.Usage]] = defaultdict(list)
                for r in rows:
                    usage[r.account_id].append(monthly.Usage(r.utility, r.quantity, r.previous))
                inserted = set(
                    (
                        await conn.scalars(
                            text(
                                "INSERT INTO insights.monthly_pushes (month, account_id) "
                                "SELECT :month, unnest(CAST(:accounts AS text[])) ON CONFLICT DO NOTHING "
                                "RETURNING account_id"
                            ),
                            {"month": month, "accounts": sorted(usage)},
                        )
                    ).all()
                )
                notices: list[tuple[str, BaseModel, bool]] = [
                    (topics.monthly_report(h.account_id), self._notice(h, month, usage[h.account_id]), False)
                    for h in households
                    if h.account_id in inserted
                ]
                await self._outbox.add_many(conn, notices)
            self._outbox.notify()
            queued += len(notices)
            PUSHED.inc(len(notices))
        if queued:
            log.info("monthly reports for %s: %d notices queued", month, queued)
        return queued

    def _notice(self, household: Row[Any], month: str, usage: list[monthly.Usage]) -> MonthlyReportReady:
        account_id: str = household.account_id
        title_zh, body_zh, title_en, body_en = monthly.notice(month, usage)
        return MonthlyReportReady(
            source=self._source,
            occurred_at=self._clock(),
            account_id=account_id,
            tenant_id=household.tenant_id,
            estate_id=household.estate_id,
            room_id=household.room_id,
            month=month,
            usage=tuple(
                MonthUsage(
                    utility=u.utility, quantity=u.quantity, previous_quantity=u.previous, change_pct=u.change_pct
                )
                for u in usage
            ),
            title_zh=title_zh,
            body_zh=body_zh,
            title_en=title_en,
            body_en=body_en,
            report_path=f"/v1/me/accounts/{account_id}/insights",
        )
