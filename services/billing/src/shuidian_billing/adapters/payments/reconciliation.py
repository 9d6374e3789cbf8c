"""Daily reconciliation (对账): a provider's bill for one local day against the payments and refunds the
ledger booked that day (`domain.payment_reconciliation`); the report is kept per provider and day and
every difference opens a review item (once, however often the day is reconciled again)."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.payments.clients import AlipayClient, WechatPayClient
from shuidian_billing.adapters.payments.problems import Problems
from shuidian_billing.domain.payment_reconciliation import Difference, Kind, Line, Report, reconcile
from shuidian_shared.contracts.payments import PaymentProblemKind

log = logging.getLogger(__name__)

DIFFERENCES = Counter(
    "billing_payment_reconciliation_differences_total",
    "lines a provider's bill and the ledger disagree on (alarm on any increase)",
    ["provider", "problem"],
)
_REASONS = {
    "missing": "渠道账单有、账本无（已收款未入账）· settled by the provider, not booked",
    "extra": "账本有、渠道账单无 · booked, not in the provider's bill",
    "amount": "金额不符 · amounts differ",
}


async def booked(engine: AsyncEngine, provider: str, day: date, zone: ZoneInfo) -> list[Line]:
    """What the ledger booked through `provider` on the local `day`: payments by provider transaction id,
    refunds sent to the provider by their refund number."""
    start = datetime.combine(day, time(), zone)
    params = {"c": provider, "s": start, "e": start + timedelta(days=1)}
    async with engine.connect() as conn:
        payments = await conn.execute(
            text(
                "SELECT idempotency_key, reference, amount FROM billing.payments "
                "WHERE channel = :c AND created_at >= :s AND created_at < :e"
            ),
            params,
        )
        lines = [
            Line(Kind.PAYMENT, r.idempotency_key.removeprefix(f"{provider}:"), r.reference or "", r.amount)
            for r in payments
        ]
        refunds = await conn.execute(
            text(
                "SELECT r.refund_id, p.reference, r.amount FROM billing.refunds r JOIN billing.payments p USING (payment_id) "
                "WHERE r.channel = :c AND r.provider_status IS NOT NULL AND r.created_at >= :s AND r.created_at < :e"
            ),
            params,
        )
        lines += [Line(Kind.REFUND, r.refund_id.hex, r.reference or "", r.amount) for r in refunds]
    return lines


async def run(
    engine: AsyncEngine,
    client: WechatPayClient | AlipayClient,
    provider: str,
    day: date,
    zone: ZoneInfo,
    problems: Problems | None = None,
) -> dict[str, Any]:
    """Download the day's bill, match it, keep the report, open a review item per difference."""
    settled = await client.bill(day)
    report = reconcile(settled, await booked(engine, provider, day, zone))
    async with engine.begin() as conn:
        problems = problems or Problems(None, "billing")
        for diff in report.differences:
            review = _review(provider, day, diff)
            opened = await problems.open(
                conn,
                review_kind=review["k"],
                problem=PaymentProblemKind.RECONCILIATION,
                provider=provider,
                subject=review["s"],
                amount=review["m"],
                reason=review["r"],
                detail=review["d"],
            )
            if opened is not None:
                DIFFERENCES.labels(provider, diff.problem).inc()
        row = (
            await conn.execute(
                text(
                    "INSERT INTO billing.reconciliations (provider, bill_date, settled_payments, settled_refunds, "
                    "booked_payments, booked_refunds, lines, differences) VALUES (:p, :d, :sp, :sr, :bp, :br, :n, "
                    "CAST(:diff AS jsonb)) ON CONFLICT (provider, bill_date) DO UPDATE SET settled_payments = :sp, "
                    "settled_refunds = :sr, booked_payments = :bp, booked_refunds = :br, lines = :n, "
                    "differences = CAST(:diff AS jsonb), run_at = now() RETURNING *"
                ),
                _report_params(provider, day, report),
            )
        ).one()
    problems.published()
    if report.differences:
        log.warning("%s bill of %s: %d difference(s) held for review", provider, day, len(report.differences))
    return _out(row._asdict())


async def reports(engine: AsyncEngine, day: date | None, limit: int) -> list[dict[str, Any]]:
    """Settled vs booked per channel and day, newest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT * FROM billing.reconciliations WHERE (CAST(:d AS date) IS NULL OR bill_date = :d) "
                "ORDER BY bill_date DESC, provider LIMIT :n"
            ),
            {"d": day, "n": limit},
        )
        return [_out(r._asdict()) for r in rows]


async def done(engine: AsyncEngine, provider: str, day: date) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM billing.reconciliations WHERE provider = :p AND bill_date = :d"),
            {"p": provider, "d": day},
        )
        return found.first() is not None


def _review(provider: str, day: date, diff: Difference) -> dict[str, Any]:
    # A payment settled but never booked is credited from the review through the key a notification would
    # have used (provider:transaction id), so it can never be credited twice.
    subject = f"{provider}:{diff.key}" if diff.kind is Kind.PAYMENT else f"{provider}:refund:{diff.key}"
    amount = diff.settled if diff.settled is not None else diff.booked
    detail = {
        "bill_date": day.isoformat(),
        "line": diff.kind.value,
        "order_id": diff.order_id,
        "settled": None if diff.settled is None else str(diff.settled),
        "booked": None if diff.booked is None else str(diff.booked),
    }
    return {
        "k": f"reconciliation_{diff.problem}",
        "s": subject,
        "m": amount,
        "r": f"对账 {day}: {_REASONS[diff.problem]}",
        "d": detail,
    }


def _report_params(provider: str, day: date, report: Report) -> dict[str, Any]:
    differences = [
        {
            "problem": d.problem,
            "line": d.kind.value,
            "key": d.key,
            "order_id": d.order_id,
            "settled": None if d.settled is None else str(d.settled),
            "booked": None if d.booked is None else str(d.booked),
        }
        for d in report.differences
    ]
    return {
        "p": provider,
        "d": day,
        "sp": report.settled_payments,
        "sr": report.settled_refunds,
        "bp": report.booked_payments,
        "br": report.booked_refunds,
        "n": report.lines,
        "diff": json.dumps(differences),
    }


def _out(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "balanced": not row["differences"]}
