"""Purses, available credit and balance levels: re-classify after money moved, queue one event per
change (in the caller's transaction), and re-announce each purse's last event now and then."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.sql import OWNERS_SQL
from shuidian_billing.domain import ledger
from shuidian_billing.domain.meters import COMMON
from shuidian_billing.errors import BillingError, NotFound
from shuidian_billing.settings import BillingSettings
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel, MeterRef, Utility

log = logging.getLogger(__name__)

REANNOUNCED = Counter("billing_balance_events_reannounced_total", "balance events published again (anti-entropy)")
_SEVERITY = {BalanceLevel.OK: 0, BalanceLevel.LOW_1: 1, BalanceLevel.LOW_2: 2, BalanceLevel.EXHAUSTED: 3}


async def balance_modes(conn: AsyncConnection, account_ids: list[str]) -> dict[str, bool]:
    """Per account: True when water and electricity share one balance (水电一卡通), the default."""
    rows = await conn.execute(
        text(
            "SELECT a.account_id, coalesce(e.shared_balance, true) AS shared FROM billing.accounts a "
            "LEFT JOIN billing.estates e USING (estate_id) WHERE a.account_id = ANY(:a)"
        ),
        {"a": account_ids},
    )
    return {row.account_id: row.shared for row in rows}


def purse_for(account_id: str, utility: Utility, shared: dict[str, bool]) -> str:
    """The ledger account a charge of `utility` draws on, given the accounts' balance modes."""
    return store.purse(account_id, None if shared.get(account_id, True) else utility)


def _purses(account_id: str, shared: bool) -> list[tuple[str, Utility | None]]:
    if shared:
        return [("all", None)]
    return [(u.value, u) for u in Utility]


class BalanceLevels:
    """Available credit per purse and the balance level each purse is at."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, settings: BillingSettings, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source

    async def purse_of(self, conn: AsyncConnection, account_id: str, utility: Utility | None) -> str:
        """The ledger account holding the household's money for `utility` (shared purse if utility is None)."""
        shared = await balance_modes(conn, [account_id])
        if account_id not in shared:
            raise NotFound(f"no account {account_id}")
        if shared[account_id]:
            return store.household(account_id)
        if utility is None:
            raise BillingError(
                "this estate keeps separate water and electricity balances: name the utility",
                code="utility_required",
                status_code=422,
            )
        return store.purse(account_id, utility)

    async def available(
        self, conn: AsyncConnection, account_ids: list[str]
    ) -> dict[tuple[str, str], dict[str, Decimal]]:
        """Per (account, purse): paid and subsidy balances, unposted charges and the available credit."""
        shared = await balance_modes(conn, account_ids)
        names: list[str] = []
        for account in account_ids:
            for _, utility in _purses(account, shared.get(account, True)):
                purse = store.purse(account, utility)
                names += [purse, store.subsidy(purse)]
        balances = await store.balances(conn, names)
        owed: dict[tuple[str, str], Decimal] = {}
        rows = await conn.execute(
            text(
                "SELECT account_id, utility, sum(amount) AS owed FROM ("
                "  SELECT account_id, utility, amount FROM billing.accruals WHERE account_id = ANY(:a)"
                "  UNION ALL SELECT account_id, utility, remainder FROM billing.carries WHERE account_id = ANY(:a)"
                ") o GROUP BY account_id, utility"
            ),
            {"a": account_ids},
        )
        for row in rows:
            owed[(row.account_id, row.utility)] = row.owed
        result: dict[tuple[str, str], dict[str, Decimal]] = {}
        for account in account_ids:
            for name, utility in _purses(account, shared.get(account, True)):
                purse = store.purse(account, utility)
                utilities = [utility] if utility is not None else list(Utility)
                pending = sum((owed.get((account, u.value), Decimal(0)) for u in utilities), Decimal(0))
                paid, subsidy = balances[purse], balances[store.subsidy(purse)]
                result[(account, name)] = {
                    "paid": paid,
                    "subsidy": subsidy,
                    "pending": pending,
                    "available": paid + subsidy - pending,
                }
        return result

    async def evaluate_levels(self, conn: AsyncConnection, account_ids: set[str]) -> None:
        """Re-classify each purse of the accounts and queue one event per level change (call inside the transaction)."""
        ordered = sorted(a for a in account_ids if not a.startswith(COMMON))
        if not ordered:
            return
        accounts = (
            await conn.execute(
                text(
                    "SELECT account_id, level, sequence, low_1, low_2, grace_credit FROM billing.accounts "
                    "WHERE account_id = ANY(:a) ORDER BY account_id FOR UPDATE"
                ),
                {"a": ordered},
            )
        ).all()
        levels = {
            (row.account_id, row.purse): BalanceLevel(row.level)
            for row in await conn.execute(
                text("SELECT account_id, purse, level FROM billing.purse_levels WHERE account_id = ANY(:a)"),
                {"a": ordered},
            )
        }
        available = await self.available(conn, ordered)
        by_account: dict[str, list[tuple[str, dict[str, Decimal]]]] = {}
        for (account, purse), figures in available.items():
            by_account.setdefault(account, []).append((purse, figures))
        meters: dict[str, list[MeterRef]] | None = None
        events: list[tuple[str, Any, bool]] = []
        level_rows: list[tuple[str, str, str, str | None]] = []
        account_rows: list[tuple[str, str, int]] = []
        for acc in accounts:
            sequence = acc.sequence
            purses = by_account.get(acc.account_id, [])
            worst = BalanceLevel.OK
            for purse, figures in purses:
                # A shared purse inherits the level the account had before purses existed.
                previous = levels.get((acc.account_id, purse), BalanceLevel(acc.level) if purse == "all" else None)
                thresholds = ledger.BalanceThresholds(level1=acc.low_1, level2=acc.low_2, grace_credit=acc.grace_credit)
                level = ledger.classify_balance(
                    figures["available"], previous, thresholds, self._settings.restore_hysteresis
                )
                if _SEVERITY[level] > _SEVERITY[worst]:
                    worst = level
                if level is (previous or BalanceLevel.OK) and (acc.account_id, purse) in levels:
                    continue
                if level is (previous or BalanceLevel.OK):
                    level_rows.append((acc.account_id, purse, level.value, None))
                    continue
                # An improvement that is not a restoration (low_2 → ok) is still announced, so the
                # low-balance alarm can clear and displays follow.
                kinds = ledger.transition_events(previous, level) or [BalanceEventKind.CHANGED]
                if meters is None:
                    meters = await self._meters_of(conn, ordered)
                refs = tuple(m for m in meters.get(acc.account_id, []) if purse in ("all", m.utility.value))
                for kind in kinds:
                    sequence += 1
                    event = BalanceEvent(
                        source=self._source,
                        account_id=acc.account_id,
                        kind=kind,
                        level=level,
                        balance=figures["available"].quantize(Decimal("0.01")),
                        sequence=sequence,
                        meters=refs,
                    )
                    events.append((topics.balance(acc.account_id), event, False))
                    log.info("account %s (%s): %s (available %s)", acc.account_id, purse, kind, event.balance)
                # The purse's last event is what `reannounce` publishes again (the one that decides supply).
                level_rows.append((acc.account_id, purse, level.value, events[-1][1].model_dump_json()))
            if sequence != acc.sequence or worst.value != acc.level:
                account_rows.append((acc.account_id, worst.value, sequence))
        if level_rows:
            await conn.execute(
                text(
                    "INSERT INTO billing.purse_levels (account_id, purse, level, last_event) "
                    "SELECT * FROM unnest(CAST(:a AS text[]), CAST(:p AS text[]), CAST(:l AS text[]), "
                    "CAST(:e AS jsonb[])) ON CONFLICT (account_id, purse) DO UPDATE SET level = EXCLUDED.level, "
                    "last_event = coalesce(EXCLUDED.last_event, billing.purse_levels.last_event), changed_at = now()"
                ),
                {
                    "a": [r[0] for r in level_rows],
                    "p": [r[1] for r in level_rows],
                    "l": [r[2] for r in level_rows],
                    "e": [r[3] for r in level_rows],
                },
            )
        if account_rows:
            await conn.execute(
                text(
                    "UPDATE billing.accounts a SET level = u.l, sequence = u.s FROM unnest(CAST(:a AS text[]), "
                    "CAST(:l AS text[]), CAST(:s AS bigint[])) AS u(a, l, s) WHERE a.account_id = u.a"
                ),
                {
                    "a": [r[0] for r in account_rows],
                    "l": [r[1] for r in account_rows],
                    "s": [r[2] for r in account_rows],
                },
            )
        await self._outbox.add_many(conn, events)

    async def reannounce_loop(self) -> None:
        """Publish every purse's last balance event again, now and then (see `reannounce`): one replica
        a round, the one that takes the advisory lock (the others would only publish the same again)."""
        if not self._settings.level_reannounce_seconds:
            return
        while True:
            await asyncio.sleep(self._settings.level_reannounce_seconds)
            try:
                async with self._engine.connect() as lock:
                    taken = (
                        await lock.execute(text("SELECT pg_try_advisory_lock(hashtext('billing-reannounce'))"))
                    ).scalar_one()
                    await lock.commit()
                    if not taken:
                        continue
                    try:
                        await self.reannounce()
                    finally:
                        await lock.execute(text("SELECT pg_advisory_unlock(hashtext('billing-reannounce'))"))
                        await lock.commit()
            except Exception as err:
                log.warning("re-announcing balance levels failed; next round: %s", err)

    async def reannounce(self, *, page: int = 1000) -> int:
        """Anti-entropy for balance levels: queue each purse's last event again — with its sequence
        and message id — while its level is not ok, or for a while after it changed. A consumer
        that applied it skips it (control by sequence per meter, webhooks by message id); one that
        lost it (a restoration control never saw) converges. Returns how many were queued."""
        after, queued = ("", ""), 0
        while True:
            async with self._engine.begin() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT account_id, purse, last_event FROM billing.purse_levels "
                            "WHERE last_event IS NOT NULL "
                            "AND (level <> 'ok' OR changed_at >= now() - make_interval(secs => :window)) "
                            "AND (account_id, purse) > (:account, :purse) ORDER BY account_id, purse LIMIT :n"
                        ),
                        {
                            "window": self._settings.level_reannounce_hours * 3600,
                            "account": after[0],
                            "purse": after[1],
                            "n": page,
                        },
                    )
                ).all()
                events: list[tuple[str, Any, bool]] = [
                    (topics.balance(r.account_id), BalanceEvent.model_validate(r.last_event), False) for r in rows
                ]
                await self._outbox.add_many(conn, events)
            queued += len(events)
            if events:
                self._outbox.notify()
            if len(rows) < page:
                REANNOUNCED.inc(queued)
                return queued
            after = (rows[-1].account_id, rows[-1].purse)

    @staticmethod
    async def _meters_of(conn: AsyncConnection, account_ids: list[str]) -> dict[str, list[MeterRef]]:
        """Meters each account pays for now."""
        result: dict[str, list[MeterRef]] = {}
        rows = await conn.execute(
            text(
                f"SELECT * FROM ({OWNERS_SQL.format(where='true')}) o WHERE o.account_id = ANY(:a) "
                "AND (o.valid_from IS NULL OR o.valid_from <= now()) AND (o.valid_to IS NULL OR o.valid_to > now()) "
                "ORDER BY o.meter_id"
            ),
            {"a": account_ids},
        )
        for row in rows:
            result.setdefault(row.account_id, []).append(MeterRef(meter_id=row.meter_id, utility=Utility(row.utility)))
        return result
