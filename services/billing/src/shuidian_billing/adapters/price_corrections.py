"""Correction runs (调价追溯): re-price a closed period of one plan and utility under a retroactive version,
preview each household's difference, and commit it once as audited adjustment entries.

History is never rewritten: charge lines and ledger entries stay as they were; a committed run adds one
`price_correction` transaction per household (its purse against the utility's revenue) and records the
run and its lines (`price_corrections`, `price_correction_lines`). The same run id commits once: a replay
of the same request answers the first result, a different request under that id is a 409.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.levels import BalanceLevels, balance_modes, purse_for
from shuidian_billing.adapters.tariffs import _scope, load_pricers
from shuidian_billing.domain import BillingDomainError, ledger
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME, period_start
from shuidian_billing.domain.price_corrections import ChargedHour, HouseholdCorrection, reprice
from shuidian_billing.domain.tariff_config import (
    COMPONENTS,
    ComponentIn,
    FixedIn,
    StoredVersion,
    check_plan_components,
    to_domain,
)
from shuidian_billing.domain.tariffs import FixedCharge, TariffVersion, Tiered, TimeOfUse
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import Utility, utcnow

KIND = "price_correction"
# The retroactive version is in force "since ever" inside the run: the run's period bounds what it corrects.
_SINCE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CorrectionRequest:
    """What a correction run re-prices: one plan's utility over [start, end) under `components`."""

    plan_id: str
    utility: Utility
    start: datetime
    end: datetime
    components: tuple[ComponentIn, ...]
    reason: str

    def fingerprint(self) -> str:
        body = {
            "plan_id": self.plan_id,
            "utility": self.utility.value,
            "start": self.start.astimezone(UTC).isoformat(),
            "end": self.end.astimezone(UTC).isoformat(),
            "components": COMPONENTS.dump_python(self.components, mode="json"),
            "reason": self.reason,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class PriceCorrections:
    """Previews, commits and lists correction runs."""

    def __init__(
        self, engine: AsyncEngine, outbox: Outbox, levels: BalanceLevels, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._levels = levels
        self._clock = clock

    async def preview(self, run_id: uuid.UUID, request: CorrectionRequest) -> dict[str, Any]:
        """What committing the run would post, household by household; writes nothing.

        A run already committed answers its recorded result (what was posted), whatever is asked."""
        async with self._engine.connect() as conn:
            done = await _recorded(conn, run_id)
            if done is not None:
                return done
            version = await self._check(conn, request)
            found = await _reprice(conn, request, version)
        return _result(run_id, request, found, committed=False)

    async def commit(self, run_id: uuid.UUID, request: CorrectionRequest, operator: str) -> dict[str, Any]:
        """Post each household's difference once; the same run id answers the same result ever after."""
        if not operator.strip():
            raise BillingError("a correction needs an operator", code="invalid_correction", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"price-correction:{run_id}"})
            done = await _recorded(conn, run_id)
            if done is not None:
                if done["fingerprint"] != request.fingerprint():
                    raise Conflict(f"correction run {run_id} was committed with another request", code="run_id_reused")
                return {**done, "replayed": True}
            # Runs of one plan and utility are serialised, so two cannot correct the same hours.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                {"k": f"price-corrections:{request.plan_id}:{request.utility.value}"},
            )
            version = await self._check(conn, request)
            overlapping = (
                await conn.execute(
                    text(
                        "SELECT run_id FROM billing.price_corrections WHERE plan_id = :p AND utility = :u "
                        "AND period_start < :e AND period_end > :s LIMIT 1"
                    ),
                    {"p": request.plan_id, "u": request.utility.value, "s": request.start, "e": request.end},
                )
            ).first()
            if overlapping is not None:
                raise Conflict(
                    f"run {overlapping.run_id} already corrected part of this period of the plan; "
                    "correct the rest, or reverse (冲正) that run's entries first",
                    code="correction_overlaps",
                )
            found = await _reprice(conn, request, version)
            unposted = (
                await conn.execute(
                    text("SELECT 1 FROM billing.accruals WHERE account_id = ANY(:a) AND hour < :e LIMIT 1"),
                    {"a": sorted(found), "e": request.end},
                )
            ).first()
            if unposted is not None:
                raise Conflict(
                    "some hours of the period are not posted to the ledger yet; try again after the next flush",
                    code="period_not_posted",
                )
            txns = await self._post(conn, run_id, request, found)
            result = _result(run_id, request, found, committed=True)
            await conn.execute(
                text(
                    "INSERT INTO billing.price_corrections (run_id, plan_id, utility, period_start, period_end, "
                    "components, fingerprint, operator, reason, old_total, new_total, posted_total) VALUES "
                    "(:r, :p, :u, :s, :e, CAST(:c AS jsonb), :f, :o, :why, :old, :new, :posted)"
                ),
                {
                    "r": run_id,
                    "p": request.plan_id,
                    "u": request.utility.value,
                    "s": request.start,
                    "e": request.end,
                    "c": json.dumps(COMPONENTS.dump_python(request.components, mode="json")),
                    "f": request.fingerprint(),
                    "o": operator,
                    "why": request.reason,
                    "old": result["old_total"],
                    "new": result["new_total"],
                    "posted": result["posted_total"],
                },
            )
            if found:
                ordered = sorted(found)
                await conn.execute(
                    text(
                        "INSERT INTO billing.price_correction_lines (run_id, account_id, quantity, old_amount, "
                        "new_amount, posted, txn_id) SELECT :r, * FROM unnest(CAST(:a AS text[]), "
                        "CAST(:q AS numeric[]), CAST(:o AS numeric[]), CAST(:n AS numeric[]), CAST(:p AS numeric[]), "
                        "CAST(:t AS uuid[]))"
                    ),
                    {
                        "r": run_id,
                        "a": ordered,
                        "q": [found[a].quantity for a in ordered],
                        "o": [found[a].old_amount for a in ordered],
                        "n": [found[a].new_amount for a in ordered],
                        "p": [found[a].posted for a in ordered],
                        "t": [txns.get(a) for a in ordered],
                    },
                )
            await self._levels.evaluate_levels(conn, set(found))
            recorded = await _recorded(conn, run_id)
            assert recorded is not None
        self._outbox.notify()
        return {**recorded, "replayed": False}

    async def runs(self, plan_ids: Sequence[str] | None, limit: int) -> list[dict[str, Any]]:
        """Committed runs, newest first (of the plans named, or all)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT run_id FROM billing.price_corrections WHERE CAST(:p AS text[]) IS NULL OR plan_id = ANY(:p) "
                    "ORDER BY created_at DESC, run_id LIMIT :n"
                ),
                {"p": None if plan_ids is None else list(plan_ids), "n": limit},
            )
            out = []
            for row in rows.all():
                found = await _recorded(conn, row.run_id)
                assert found is not None
                out.append(found)
            return out

    async def run(self, run_id: uuid.UUID) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            found = await _recorded(conn, run_id)
        if found is None:
            raise NotFound(f"no committed correction run {run_id}")
        return found

    async def _post(
        self,
        conn: AsyncConnection,
        run_id: uuid.UUID,
        request: CorrectionRequest,
        found: dict[str, HouseholdCorrection],
    ) -> dict[str, uuid.UUID]:
        """One adjustment per household owing or owed at least a fen: its purse against the utility's revenue.

        Transaction ids derive from the run and the household, so even a retried commit cannot post twice."""
        owing = sorted(a for a, c in found.items() if c.posted != 0)
        if not owing:
            return {}
        shared = await balance_modes(conn, owing)
        revenue = ledger.revenue_account(request.utility)
        memo = f"调价追溯 price correction {run_id}: {request.reason}"
        txns = {account: uuid.uuid5(run_id, account) for account in owing}
        await store.post_many(
            conn,
            [
                store.Transaction(
                    KIND,
                    [
                        store.Entry(
                            purse_for(account, request.utility, shared), -found[account].posted, None, request.start
                        ),
                        store.Entry(revenue, found[account].posted, None, request.start),
                    ],
                    memo,
                    txn_id=txns[account],
                )
                for account in owing
            ],
        )
        return txns

    async def _check(self, conn: AsyncConnection, request: CorrectionRequest) -> TariffVersion:
        plan = (
            await conn.execute(
                text(
                    "SELECT plan_id, estate_id, building_id, customer_class FROM billing.tariff_plans WHERE plan_id = :p"
                ),
                {"p": request.plan_id},
            )
        ).first()
        if plan is None:
            raise NotFound(f"no tariff plan {request.plan_id}")
        start, end = request.start, request.end
        if any(t.minute or t.second or t.microsecond for t in (start, end)) or end <= start:
            raise BillingError(
                "a correction covers whole hours: start < end, both on the hour", code="invalid_period", status_code=422
            )
        if end > self._clock():
            raise Conflict("only a closed period can be corrected: its end has not passed yet", code="period_open")
        if any(isinstance(c, FixedIn) for c in request.components):
            raise BillingError(
                "a correction re-prices consumption; fixed fees are not part of it",
                code="invalid_tariff",
                status_code=422,
            )
        try:
            check_plan_components(_scope(plan), request.components)
            version = to_domain(0, request.utility, _SINCE, request.components)
        except BillingDomainError as err:
            raise BillingError(str(err), code="invalid_tariff", status_code=422) from err
        if not any(not isinstance(c, FixedCharge) for c in version.components):
            raise BillingError("a correction needs a usage price", code="invalid_tariff", status_code=422)
        return version


async def _reprice(
    conn: AsyncConnection, request: CorrectionRequest, version: TariffVersion
) -> dict[str, HouseholdCorrection]:
    """Every household's correction: the plan's charge lines of the period (and, for tiers, of the tier
    period's earlier part, which counts towards usage) re-priced under the version."""
    tiered = next((c for c in version.components if isinstance(c, Tiered)), None)
    since = period_start(tiered.period, request.start, CHINA_STANDARD_TIME) if tiered else request.start
    plan_pricer = (await load_pricers(conn))[request.utility].pricers.get(request.plan_id)
    stored: dict[int, StoredVersion] = {v.tariff_id: v for v in (plan_pricer.versions if plan_pricer else [])}
    rows = (
        await conn.execute(
            text(
                "SELECT c.account_id, c.meter_id, c.hour, c.tariff_id, c.component, c.label, c.quantity, c.amount, "
                "c.first_sample, c.last_sample FROM billing.charge_lines c JOIN billing.tariffs t USING (tariff_id) "
                "WHERE t.plan_id = :p AND t.utility = :u AND c.hour >= :s AND c.hour < :e "
                "AND c.account_id NOT LIKE 'common:%' ORDER BY c.account_id, c.meter_id, c.hour, c.tariff_id"
            ),
            {"p": request.plan_id, "u": request.utility.value, "s": since, "e": request.end},
        )
    ).all()
    sizes = {
        row.account_id: int(row.size)
        for row in await conn.execute(
            text(
                "SELECT l.account_id, max(r.household_size) AS size FROM billing.leases l "
                "JOIN billing.rooms r USING (room_id) WHERE l.account_id = ANY(:a) GROUP BY l.account_id"
            ),
            {"a": sorted({r.account_id for r in rows})},
        )
    }
    groups: dict[tuple[str, str, datetime, int], list[Any]] = {}
    for row in rows:
        groups.setdefault((row.account_id, row.meter_id, row.hour, int(row.tariff_id)), []).append(row)
    hours: list[ChargedHour] = []
    for (account, meter, hour, tariff_id), lines in groups.items():
        old = stored.get(tariff_id)
        usage = [c for c in old.domain.components if not isinstance(c, FixedCharge)] if old else []
        counted = usage[0].name if usage else lines[0].component  # a piece's quantity counts under its first component
        tou = next((c.name for c in usage if isinstance(c, TimeOfUse)), None)
        rates = {line.label: line.quantity for line in lines if line.component == tou} if tou else None
        hours.append(
            ChargedHour(
                account,
                meter,
                hour,
                min(line.first_sample for line in lines),
                max(line.last_sample for line in lines),
                sum((line.quantity for line in lines if line.component == counted), Decimal(0)),
                sum((line.amount for line in lines), Decimal(0)),
                sizes.get(account, 1),
                rates,
            )
        )
    try:
        return reprice(hours, version, request.start)
    except BillingDomainError as err:
        raise BillingError(str(err), code="invalid_tariff", status_code=422) from err


async def _recorded(conn: AsyncConnection, run_id: uuid.UUID) -> dict[str, Any] | None:
    run = (await conn.execute(text("SELECT * FROM billing.price_corrections WHERE run_id = :r"), {"r": run_id})).first()
    if run is None:
        return None
    lines = await conn.execute(
        text(
            "SELECT account_id, quantity, old_amount, new_amount, posted, txn_id FROM billing.price_correction_lines "
            "WHERE run_id = :r ORDER BY account_id"
        ),
        {"r": run_id},
    )
    return {
        "run_id": run.run_id,
        "plan_id": run.plan_id,
        "utility": run.utility,
        "period_start": run.period_start,
        "period_end": run.period_end,
        "components": run.components,
        "reason": run.reason,
        "operator": run.operator,
        "committed": True,
        "created_at": run.created_at,
        "fingerprint": run.fingerprint,
        "old_total": run.old_total,
        "new_total": run.new_total,
        "posted_total": run.posted_total,
        "households": [
            {
                "account_id": line.account_id,
                "quantity": line.quantity,
                "old_amount": line.old_amount,
                "new_amount": line.new_amount,
                "difference": line.new_amount - line.old_amount,
                "posted": line.posted,
                "txn_id": line.txn_id,
            }
            for line in lines
        ],
    }


def _result(
    run_id: uuid.UUID, request: CorrectionRequest, found: dict[str, HouseholdCorrection], *, committed: bool
) -> dict[str, Any]:
    ordered = [found[a] for a in sorted(found)]
    return {
        "run_id": run_id,
        "plan_id": request.plan_id,
        "utility": request.utility.value,
        "period_start": request.start,
        "period_end": request.end,
        "components": COMPONENTS.dump_python(request.components, mode="json"),
        "reason": request.reason,
        "operator": None,
        "committed": committed,
        "created_at": None,
        "fingerprint": request.fingerprint(),
        "old_total": sum((h.old_amount for h in ordered), Decimal(0)),
        "new_total": sum((h.new_amount for h in ordered), Decimal(0)),
        "posted_total": sum((h.posted for h in ordered), Decimal(0)),
        "households": [
            {
                "account_id": h.account_id,
                "quantity": h.quantity,
                "old_amount": h.old_amount,
                "new_amount": h.new_amount,
                "difference": h.difference,
                "posted": h.posted,
                "txn_id": None,
            }
            for h in ordered
        ],
    }
