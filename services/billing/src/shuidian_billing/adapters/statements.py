"""Monthly statements (月结单) per household account, as JSON and CSV (the PDF is `statement_pdf`), and the explanation of
any ledger transaction line by line.

Money is taken from the ledger by booking time (`created_at`) in the local calendar month, so a
statement never changes once the month is over and one month's closing balance is the next
month's opening balance. Usage and the tariff breakdown are the decomposition (`charge_lines`)
of exactly the consumption hours booked in the month, so they explain the charges shown.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.tariffs import priced_under
from shuidian_billing.errors import BillingError, NotFound
from shuidian_shared.messages import Utility

ZERO = Decimal("0.00")
UNITS = {"electricity": "kWh", "water": "m³"}
UTILITY_ZH = {"electricity": "电", "water": "水"}
CHANNEL_ZH = {"cash": "现金", "bank": "银行转账", "wechat": "微信支付", "alipay": "支付宝", "sandbox": "沙箱"}
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# Sections of a statement: household entries are sorted into these by their kind and the other
# side of their ledger transaction (revenue:electricity, clearing:wechat …).
SECTIONS = ("payments", "subsidies", "charges", "fees", "refunds", "corrections", "other")
SECTION_LABELS = {
    "opening": "期初余额 Opening balance",
    "payments": "缴费 Payments",
    "subsidies": "补贴 Subsidies",
    "charges": "用量费用 Usage charges",
    "fees": "固定费用与公摊 Fees and shared areas",
    "refunds": "退款 Refunds",
    "corrections": "冲正 Corrections",
    "other": "其他 Other",
    "closing": "期末余额 Closing balance",
}


class StatementError(BillingError):
    status_code = 422
    code = "invalid_statement_request"


@dataclass(frozen=True, slots=True)
class Period:
    """A local calendar month and its UTC bounds."""

    month: str
    start: datetime
    end: datetime

    @classmethod
    def of(cls, month: str, tz: ZoneInfo) -> Period:
        match = MONTH.match(month)
        if match is None:
            raise StatementError(f"month must be YYYY-MM, not {month!r}")
        year, number = int(match[1]), int(match[2])
        first = datetime(year, number, 1, tzinfo=tz)
        following = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=tz)
        return cls(month, first.astimezone(UTC), following.astimezone(UTC))


def section_of(kind: str, counter: str) -> str:
    if kind == "topup":
        return "payments"
    if kind == "refund":
        return "refunds"
    if kind == "subsidy_credit":
        return "subsidies"
    if kind == "reversal":
        return "corrections"
    if kind == "consumption" and counter.startswith("revenue:") and counter != "revenue:fees":
        return "charges"
    if kind in ("fixed_fee", "shared_area", "fee") or counter.startswith(("revenue:fees", "shared:")):
        return "fees"
    return "other"


async def statement(engine: AsyncEngine, account_id: str, month: str, tz: ZoneInfo) -> dict[str, Any]:
    """The month's statement of one household account (opening + movements = closing, to the fen)."""
    period = Period.of(month, tz)
    names = store.purses_of(account_id)
    async with engine.connect() as conn:
        account = (
            await conn.execute(
                text("SELECT account_id, name FROM billing.accounts WHERE account_id = :a"), {"a": account_id}
            )
        ).first()
        if account is None:
            raise NotFound(f"no account {account_id}")
        balances = (
            await conn.execute(
                text(
                    "SELECT ledger_account, "
                    "coalesce(sum(amount) FILTER (WHERE created_at < :s), 0) AS opening, "
                    "coalesce(sum(amount) FILTER (WHERE created_at < :e), 0) AS closing "
                    "FROM billing.ledger_entries WHERE ledger_account = ANY(:n) AND created_at < :e GROUP BY ledger_account"
                ),
                {"n": names, "s": period.start, "e": period.end},
            )
        ).all()
        entries = (
            await conn.execute(
                text(
                    "WITH h AS (SELECT entry_id, txn_id, ledger_account, amount, kind, meter_id, period_start, memo, created_at "
                    "  FROM billing.ledger_entries WHERE ledger_account = ANY(:n) AND created_at >= :s AND created_at < :e), "
                    # The other side of each transaction, found with one set-based lookup by txn_id.
                    "counters AS (SELECT txn_id, min(ledger_account) AS counter FROM billing.ledger_entries "
                    "  WHERE txn_id IN (SELECT txn_id FROM h) AND NOT ledger_account = ANY(:n) GROUP BY txn_id) "
                    "SELECT h.*, c.counter, p.channel, p.reference, p.payment_id FROM h "
                    "LEFT JOIN counters c USING (txn_id) LEFT JOIN billing.payments p USING (txn_id) ORDER BY h.entry_id"
                ),
                {"n": names, "s": period.start, "e": period.end},
            )
        ).all()
        breakdown = await _breakdown(conn, account_id, names, period)
    opening = sum((b.opening for b in balances), ZERO)
    closing = sum((b.closing for b in balances), ZERO)
    totals = dict.fromkeys(SECTIONS, ZERO)
    charges_by_utility = {u.value: ZERO for u in Utility}
    lines: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    for e in entries:
        counter = e.counter or ""
        section = section_of(e.kind, counter)
        totals[section] += e.amount
        if section == "charges":
            charges_by_utility[counter.removeprefix("revenue:")] = (
                charges_by_utility.get(counter.removeprefix("revenue:"), ZERO) - e.amount
            )
            continue  # hourly charges are summarised by utility and tariff, not listed one by one
        lines[section].append(
            {
                "entry_id": e.entry_id,
                "txn_id": e.txn_id,
                "at": e.created_at.astimezone(tz).isoformat(),
                "amount": e.amount,
                "purse": e.ledger_account,
                "channel": e.channel,
                "reference": e.reference,
                "payment_id": e.payment_id,
                "memo": e.memo,
            }
        )
    movements = sum(totals.values(), ZERO)
    usage = _usage(breakdown, charges_by_utility)
    return {
        "account_id": account.account_id,
        "name": account.name,
        "month": month,
        "timezone": str(tz),
        "period_start": period.start.astimezone(tz).isoformat(),
        "period_end": period.end.astimezone(tz).isoformat(),
        "opening_balance": opening,
        "closing_balance": closing,
        "purses": [{"purse": b.ledger_account, "opening": b.opening, "closing": b.closing} for b in balances],
        "totals": {
            "payments": totals["payments"],
            "subsidies": totals["subsidies"],
            "charges": -totals["charges"],
            "fees": -totals["fees"],
            "refunds": -totals["refunds"],
            "corrections": totals["corrections"],
            "other": totals["other"],
        },
        "charges_by_utility": charges_by_utility,
        "usage": usage,
        "tariff_breakdown": breakdown,
        "lines": lines,
        # Guarded by the ledger's own invariants; shown so anyone can check it.
        "reconciles": opening + movements == closing,
    }


async def _breakdown(conn: AsyncConnection, account_id: str, names: list[str], period: Period) -> list[dict[str, Any]]:
    """The tariff decomposition of the consumption hours booked to the account in the period."""
    rows = await conn.execute(
        text(
            "WITH booked AS (SELECT DISTINCT meter_id, period_start AS hour FROM billing.ledger_entries "
            "  WHERE ledger_account = ANY(:n) AND kind = 'consumption' AND created_at >= :s AND created_at < :e) "
            "SELECT t.utility, c.tariff_id, t.effective_from, c.component, c.label, c.unit_price, "
            "sum(c.quantity) AS quantity, sum(c.amount) AS amount "
            "FROM billing.charge_lines c JOIN booked b ON b.meter_id = c.meter_id AND b.hour = c.hour "
            "JOIN billing.tariffs t USING (tariff_id) WHERE c.account_id = :a "
            "GROUP BY t.utility, c.tariff_id, t.effective_from, c.component, c.label, c.unit_price "
            "ORDER BY t.utility, t.effective_from, c.component, c.label, c.unit_price"
        ),
        {"n": names, "s": period.start, "e": period.end, "a": account_id},
    )
    return [
        {
            "utility": r.utility,
            "tariff_id": r.tariff_id,
            "tariff_effective_from": r.effective_from,
            "component": r.component,
            "label": r.label,
            "unit_price": r.unit_price,
            "quantity": r.quantity,
            "unit": UNITS.get(r.utility, ""),
            "amount_exact": r.amount,
        }
        for r in rows
    ]


def _usage(breakdown: list[dict[str, Any]], charged: dict[str, Decimal]) -> list[dict[str, Any]]:
    # Each usage component prices the whole quantity (split over its rates or tiers), so one
    # component's lines add up to the usage; the largest sum guards against fixed-fee components.
    per_component: dict[tuple[str, str], Decimal] = {}
    for line in breakdown:
        key = (line["utility"], line["component"])
        per_component[key] = per_component.get(key, Decimal(0)) + line["quantity"]
    result = []
    for utility in Utility:
        quantities = [q for (u, _), q in per_component.items() if u == utility.value]
        result.append(
            {
                "utility": utility.value,
                "quantity": max(quantities, default=Decimal(0)),
                "unit": UNITS[utility.value],
                "charged": charged.get(utility.value, ZERO),
            }
        )
    return result


# --- renderings -----------------------------------------------------------------------------------


def _rows(doc: dict[str, Any]) -> Iterable[list[str]]:
    """The statement as table rows: section, time, description, quantity, amount (shared by CSV and PDF)."""
    yield ["项目 Section", "时间 Time", "说明 Description", "数量 Quantity", "金额 Amount (CNY)"]
    yield [SECTION_LABELS["opening"], doc["period_start"], "", "", str(doc["opening_balance"])]
    for u in doc["usage"]:
        yield [
            SECTION_LABELS["charges"],
            "",
            f"{UTILITY_ZH[u['utility']]} {u['utility']}",
            f"{u['quantity']} {u['unit']}",
            str(-u["charged"]),
        ]
    for b in doc["tariff_breakdown"]:
        yield [
            "  计价明细 Tariff",
            "",
            f"{UTILITY_ZH.get(b['utility'], '')} {b['component']}/{b['label']} @ {b['unit_price']}",
            f"{b['quantity']} {b['unit']}",
            f"({b['amount_exact']})",
        ]
    for section in ("payments", "subsidies", "fees", "refunds", "corrections", "other"):
        for line in doc["lines"][section]:
            what = CHANNEL_ZH.get(line["channel"] or "", "") + (f" {line['channel']}" if line["channel"] else "")
            yield [
                SECTION_LABELS[section],
                line["at"],
                (what + " " + (line["reference"] or line["memo"])).strip(),
                "",
                str(line["amount"]),
            ]
    yield [SECTION_LABELS["closing"], doc["period_end"], "", "", str(doc["closing_balance"])]


# A cell a spreadsheet would run as a formula (OWASP CSV injection): =, +, -, @, tab or CR first.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def csv_cell(value: object) -> str:
    """A cell as text a spreadsheet shows and never evaluates: a formula-like cell gets a leading
    single quote; a plain number (a negative amount) stays a number."""
    cell = str(value)
    if cell.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def to_csv(doc: dict[str, Any]) -> bytes:
    """CSV in UTF-8 with a byte-order mark, so spreadsheet programs show the Chinese text. Names,
    references and memos are written by people: every cell goes through `csv_cell`."""
    out = io.StringIO()
    writer = csv.writer(out)
    head = [f"月结单 Statement {doc['month']}", doc["account_id"], doc["name"], doc["timezone"]]
    writer.writerow([csv_cell(c) for c in head])
    writer.writerows([csv_cell(c) for c in row] for row in _rows(doc))
    return ("\ufeff" + out.getvalue()).encode()


# --- explanation ----------------------------------------------------------------------------------


async def explain(engine: AsyncEngine, txn_id: Any, tz: ZoneInfo) -> dict[str, Any]:
    """Why a ledger transaction moved what it moved: for a charge, the readings (register span and
    sample times), the tariff version, component, time-of-use segment or tier, quantity and price."""
    async with engine.connect() as conn:
        entries = (
            await conn.execute(
                text(
                    "SELECT entry_id, ledger_account, amount, kind, meter_id, period_start, reverses, memo, created_at "
                    "FROM billing.ledger_entries WHERE txn_id = :t ORDER BY entry_id"
                ),
                {"t": txn_id},
            )
        ).all()
        if not entries:
            raise NotFound(f"no ledger transaction {txn_id}")
        result: dict[str, Any] = {
            "txn_id": txn_id,
            "kind": entries[0].kind,
            "booked_at": entries[0].created_at.astimezone(tz).isoformat(),
            "memo": entries[0].memo,
            "reverses": entries[0].reverses,
            "entries": [
                {"ledger_account": e.ledger_account, "amount": e.amount, "meter_id": e.meter_id} for e in entries
            ],
        }
        charged = [e for e in entries if e.ledger_account.startswith("household:") and e.amount < 0 and e.meter_id]
        if entries[0].kind != "consumption" or not charged:
            payment = (
                await conn.execute(
                    text(
                        "SELECT payment_id, channel, reference, amount, created_at FROM billing.payments WHERE txn_id = :t"
                    ),
                    {"t": txn_id},
                )
            ).first()
            refund = (
                await conn.execute(
                    text(
                        "SELECT refund_id, payment_id, channel, amount, operator, reason FROM billing.refunds WHERE txn_id = :t"
                    ),
                    {"t": txn_id},
                )
            ).first()
            result["payment"] = payment._asdict() if payment else None
            result["refund"] = refund._asdict() if refund else None
            return result
        meter_id, hour = charged[0].meter_id, charged[0].period_start
        account_id = charged[0].ledger_account.split(":")[1]
        posted = -sum((e.amount for e in charged), ZERO)
        lines = (
            await conn.execute(
                text(
                    "SELECT c.tariff_id, t.utility, t.effective_from, t.unit_price AS flat_price, t.components, c.component, "
                    "c.label, c.unit_price, c.quantity, c.amount, c.register_from, c.register_to, c.first_sample, c.last_sample "
                    "FROM billing.charge_lines c JOIN billing.tariffs t USING (tariff_id) "
                    "WHERE c.meter_id = :m AND c.hour = :h AND c.account_id = :a "
                    "ORDER BY t.effective_from, c.component, c.first_sample, c.label"
                ),
                {"m": meter_id, "h": hour, "a": account_id},
            )
        ).all()
        plans = await priced_under(conn, [line.tariff_id for line in lines])
    exact = sum((line.amount for line in lines), Decimal(0))
    result.update(
        # "priced under plan X version 3 because …", once per tariff version that priced the hour.
        priced_under=[
            plans[t] | {"tariff_id": t} for t in dict.fromkeys(line.tariff_id for line in lines) if t in plans
        ],
        meter_id=meter_id,
        account_id=account_id,
        hour_start=hour.astimezone(tz).isoformat() if hour else None,
        posted=posted,
        exact=exact,
        tariff_versions={
            line.tariff_id: {
                "plan": plans[line.tariff_id] | {"tariff_id": line.tariff_id} if line.tariff_id in plans else None,
                "effective_from": line.effective_from,
                "flat_unit_price": line.flat_price,
                "components": line.components,
            }
            for line in lines
        },
        # The one rounding rule: posted in whole fen toward zero, the remainder carried to the meter's next hour.
        rounding_note_zh="按分向零舍入，余数结转至该表下一小时",
        rounding_note="posted in whole fen rounded toward zero; the remainder (with any carried in) moves to the meter's next hour",
        lines=[
            {
                "tariff_id": line.tariff_id,
                "utility": line.utility,
                "tariff_effective_from": line.effective_from,
                "component": line.component,
                "segment_or_tier": line.label,
                "unit_price": line.unit_price,
                "quantity": line.quantity,
                "unit": UNITS.get(line.utility, ""),
                "amount_exact": line.amount,
                "readings": {
                    "register_from": line.register_from,
                    "register_to": line.register_to,
                    "first_sample": line.first_sample.astimezone(tz).isoformat(),
                    "last_sample": line.last_sample.astimezone(tz).isoformat(),
                },
            }
            for line in lines
        ],
    )
    return result
