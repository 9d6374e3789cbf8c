"""Bank transfers: parse a bank statement CSV, match each credit line to an account by the payment
reference, room code or account id written on the transfer, credit it once per bank line, and
send what cannot be matched to the review queue."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.errors import NotFound, PaymentError
from shuidian_shared.money import CENT

MAX_STATEMENT_BYTES = 5_000_000
# Column names as banks export them (zh-CN and English), lower-cased.
COLUMNS = {
    "date": ("date", "value_date", "交易日期", "记账日期", "日期"),
    "amount": ("amount", "credit", "贷方金额", "收入金额", "交易金额", "金额"),
    "memo": ("reference", "memo", "附言", "摘要", "用途", "备注"),
    "payer": ("payer", "付款人", "对方户名", "付款人名称"),
    "txn": ("transaction_id", "bank_txn_id", "交易流水号", "流水号"),
}
REQUIRED = ("date", "amount", "memo")
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d")
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


class StatementInvalid(PaymentError):
    status_code = 422
    code = "bank_statement_invalid"


@dataclass(frozen=True, slots=True)
class BankLine:
    """One credit line of a statement; `key` identifies it across re-imports of the same file."""

    line_no: int
    key: str
    value_date: date
    amount: Decimal
    payer: str
    memo: str

    def tokens(self) -> set[str]:
        return {t.rstrip(".:-_").upper() for t in TOKEN.findall(self.memo)} - {""}


def _decode(data: bytes) -> str:
    # Chinese banks export GB18030/GBK as often as UTF-8.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise StatementInvalid("statement is neither UTF-8 nor GB18030 text")


def _amount(raw: str, line_no: int) -> Decimal:
    cleaned = raw.strip().replace(",", "").replace("¥", "").replace("￥", "")
    try:
        value = Decimal(cleaned) if cleaned else Decimal(0)
    except InvalidOperation as err:
        raise StatementInvalid(f"line {line_no}: amount {raw!r} is not a number") from err
    if not value.is_finite() or value != value.quantize(CENT):
        raise StatementInvalid(f"line {line_no}: amount {raw!r} must have at most two decimals")
    return value.quantize(CENT)


def _date(raw: str, line_no: int) -> date:
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(raw.strip(), fmt).date()  # noqa: DTZ007 - a calendar date, no time
        except ValueError:
            continue
    raise StatementInvalid(f"line {line_no}: date {raw!r} is not YYYY-MM-DD")


def parse_statement(data: bytes) -> tuple[list[BankLine], int]:
    """The credit lines of a statement CSV, and how many debit or zero lines were skipped."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise StatementInvalid(f"statement larger than {MAX_STATEMENT_BYTES} bytes")
    try:
        rows = list(csv.reader(io.StringIO(_decode(data), newline="")))
    except csv.Error as err:
        raise StatementInvalid(f"not a CSV file: {err}") from err
    if not rows:
        raise StatementInvalid("statement is empty")
    header = [h.strip().lower() for h in rows[0]]
    index: dict[str, int] = {}
    for field, names in COLUMNS.items():
        found = next((header.index(n) for n in names if n in header), None)
        if found is not None:
            index[field] = found
    missing = [f for f in REQUIRED if f not in index]
    if missing:
        raise StatementInvalid(f"statement lacks column(s) {', '.join(missing)}; header was {rows[0]}")
    lines: list[BankLine] = []
    skipped = 0
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise StatementInvalid(f"line {line_no}: {len(row)} columns, header has {len(header)}")

        def cell(field: str, row: list[str] = row) -> str:
            return row[index[field]].strip() if field in index else ""

        amount = _amount(cell("amount"), line_no)
        value_date = _date(cell("date"), line_no)
        if amount <= 0:
            skipped += 1
            continue
        payer, memo, txn = cell("payer"), cell("memo"), cell("txn")
        if txn:
            key = f"txn:{txn}"
        else:
            # Without a bank transaction id, identical lines in one file are told apart by their order.
            base = hashlib.sha256(f"{value_date}|{amount}|{payer}|{memo}".encode()).hexdigest()[:32]
            seen[base] = seen.get(base, 0) + 1
            key = f"line:{base}:{seen[base]}"
        if len(key) > 100:
            raise StatementInvalid(f"line {line_no}: transaction id too long")
        lines.append(BankLine(line_no, key, value_date, amount, payer[:200], memo[:500]))
    return lines, skipped


class BankImports:
    def __init__(self, engine: AsyncEngine, billing: Billing) -> None:
        self._engine = engine
        self._billing = billing

    async def put_alias(self, alias: str, account_id: str, kind: str) -> None:
        async with self._engine.begin() as conn:
            await require_account(conn, account_id)
            await conn.execute(
                text(
                    "INSERT INTO billing.payment_aliases (alias, account_id, kind) VALUES (:a, :c, :k) "
                    "ON CONFLICT (alias) DO UPDATE SET account_id = EXCLUDED.account_id, kind = EXCLUDED.kind"
                ),
                {"a": alias.upper(), "c": account_id, "k": kind},
            )

    async def import_statement(self, filename: str, data: bytes, imported_by: str) -> dict[str, Any]:
        """Credit every matched line once (re-importing a file credits nothing twice); queue the rest."""
        lines, skipped = parse_statement(data)
        import_id = uuid.uuid4()
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.bank_imports (import_id, filename, sha256, imported_by) VALUES (:i, :f, :h, :b)"
                ),
                {"i": import_id, "f": filename, "h": hashlib.sha256(data).hexdigest(), "b": imported_by},
            )
            known = {
                r.line_key
                for r in await conn.execute(
                    text("SELECT line_key FROM billing.bank_lines WHERE line_key = ANY(:k)"),
                    {"k": [x.key for x in lines]},
                )
            }
            owners = await _owners(conn, set().union(*(x.tokens() for x in lines)) if lines else set())
        results: list[dict[str, Any]] = []
        for line in lines:
            if line.key in known:
                results.append({"line_no": line.line_no, "status": "duplicate", "line_key": line.key})
                continue
            accounts = {owners[t] for t in line.tokens() if t in owners}
            results.append(await self._apply(import_id, line, accounts))
        count = {s: sum(1 for r in results if r["status"] == s) for s in ("matched", "review", "duplicate")}
        return {"import_id": import_id, "lines": len(lines), "skipped_debits": skipped, **count, "results": results}

    async def _apply(self, import_id: uuid.UUID, line: BankLine, accounts: set[str]) -> dict[str, Any]:
        payment_id = None
        if len(accounts) == 1:
            (account_id,) = accounts
            payment = await ledger_port.credit(
                self._billing,
                account_id=account_id,
                amount=line.amount,
                channel="bank",
                reference=line.memo[:100] or None,
                key=f"bank:{line.key}",
            )
            payment_id, status, reason = payment["payment_id"], "matched", ""
        else:
            account_id, status = None, "review"
            reason = (
                "附言中没有可识别的缴费编号、房号或账户 · no payment reference, room code or account id found"
                if not accounts
                else f"附言指向多个账户 · the memo names several accounts: {', '.join(sorted(accounts))}"
            )
        async with self._engine.begin() as conn:
            inserted = (
                await conn.execute(
                    text(
                        "INSERT INTO billing.bank_lines (line_key, import_id, line_no, value_date, amount, payer, memo, status, "
                        "account_id, payment_id, reason) VALUES (:k, :i, :n, :d, :m, :p, :memo, :s, :a, :pay, :r) "
                        "ON CONFLICT (line_key) DO NOTHING RETURNING line_key"
                    ),
                    {
                        "k": line.key,
                        "i": import_id,
                        "n": line.line_no,
                        "d": line.value_date,
                        "m": line.amount,
                        "p": line.payer,
                        "memo": line.memo,
                        "s": status,
                        "a": account_id,
                        "pay": payment_id,
                        "r": reason,
                    },
                )
            ).first()
            if inserted is None:  # a concurrent import of the same line got there first
                return {"line_no": line.line_no, "status": "duplicate", "line_key": line.key}
            if status == "review":
                await conn.execute(
                    text(
                        "INSERT INTO billing.payment_reviews (kind, subject, amount, reason, detail) "
                        "VALUES ('bank_unmatched', :s, :m, :r, CAST(:d AS jsonb)) ON CONFLICT (kind, subject) DO NOTHING"
                    ),
                    {
                        "s": line.key,
                        "m": line.amount,
                        "r": reason,
                        "d": json.dumps({"value_date": str(line.value_date), "payer": line.payer, "memo": line.memo}),
                    },
                )
        return {
            "line_no": line.line_no,
            "status": status,
            "line_key": line.key,
            "amount": line.amount,
            "account_id": account_id,
            "payment_id": payment_id,
            "reason": reason,
        }


async def _owners(conn: AsyncConnection, tokens: set[str]) -> dict[str, str]:
    """Which account each token names: a registered alias, a room code (its current lease), or an account id."""
    if not tokens:
        return {}
    rows = await conn.execute(
        text(
            "SELECT alias AS token, account_id FROM billing.payment_aliases WHERE alias = ANY(:t) "
            "UNION ALL SELECT upper(account_id), account_id FROM billing.accounts WHERE upper(account_id) = ANY(:t) "
            # A room code names the household whose lease covers today.
            "UNION ALL SELECT upper(r.code), l.account_id FROM billing.rooms r JOIN billing.leases l USING (room_id) "
            "WHERE upper(r.code) = ANY(:t) AND l.starts_at <= now() AND (l.ends_at IS NULL OR l.ends_at > now())"
        ),
        {"t": sorted(tokens)},
    )
    owners: dict[str, str] = {}
    for row in rows:
        # A token that names two accounts (alias of one, id of another) matches neither.
        owners[row.token] = row.account_id if owners.get(row.token, row.account_id) == row.account_id else ""
    return {t: a for t, a in owners.items() if a}


async def require_account(conn: AsyncConnection, account_id: str) -> None:
    if (
        await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
    ).first() is None:
        raise NotFound(f"no account {account_id}")
