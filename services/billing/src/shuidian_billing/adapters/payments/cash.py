"""Cash at the counter: a cashier opens a shift, takes payments against numbered receipts
(sequential per counter, never reused), and closes the shift with its totals and the counted cash."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.errors import Conflict, NotFound, PaymentError


def receipt_number(counter_id: str, number: int) -> str:
    """The printed receipt number, e.g. ``C01-000042``."""
    return f"{counter_id}-{number:06d}"


class CashDesk:
    def __init__(self, engine: AsyncEngine, billing: Billing) -> None:
        self._engine = engine
        self._billing = billing

    async def open_shift(self, counter_id: str, cashier: str, opening_float: Decimal) -> dict[str, Any]:
        shift_id = uuid.uuid4()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO billing.cash_counters (counter_id) VALUES (:c) ON CONFLICT DO NOTHING"),
                    {"c": counter_id},
                )
                await conn.execute(
                    text(
                        "INSERT INTO billing.cash_shifts (shift_id, counter_id, cashier, opening_float) VALUES (:s, :c, :w, :f)"
                    ),
                    {"s": shift_id, "c": counter_id, "w": cashier, "f": opening_float},
                )
        except IntegrityError as err:
            raise Conflict(f"counter {counter_id} already has an open shift", code="shift_already_open") from err
        return await self.shift(shift_id)

    async def take_payment(self, shift_id: uuid.UUID, account_id: str, amount: Decimal, key: str) -> dict[str, Any]:
        """Credit a cash payment and issue its receipt; a retry with the same key returns the same receipt."""
        async with self._engine.connect() as conn:
            shift = await self._shift_row(conn, shift_id)
            if shift.closed_at is not None:
                done = (
                    await conn.execute(
                        text("SELECT 1 FROM billing.payments WHERE idempotency_key = :k"), {"k": f"cash:{key}"}
                    )
                ).first()
                if done is None:  # a retry of a payment taken before the close still gets its receipt
                    raise PaymentError("收银班次已结束 · the shift is closed", code="shift_closed", status_code=409)
        payment = await ledger_port.credit(
            self._billing,
            account_id=account_id,
            amount=amount,
            channel="cash",
            reference=f"counter {shift.counter_id}",
            key=f"cash:{key}",
        )
        # The credit is committed first; a crash before the receipt is healed by the client's retry,
        # which replays the credit and issues the receipt here.
        async with self._engine.begin() as conn:
            # The counter row serialises receipt issue: concurrent retries see each other's receipt.
            await conn.execute(
                text("SELECT 1 FROM billing.cash_counters WHERE counter_id = :c FOR UPDATE"), {"c": shift.counter_id}
            )
            receipt = (
                await conn.execute(
                    text("SELECT * FROM billing.cash_receipts WHERE payment_id = :p"), {"p": payment["payment_id"]}
                )
            ).first()
            if receipt is None:
                number = (
                    await conn.execute(
                        text(
                            "UPDATE billing.cash_counters SET last_receipt_no = last_receipt_no + 1 "
                            "WHERE counter_id = :c RETURNING last_receipt_no"
                        ),
                        {"c": shift.counter_id},
                    )
                ).scalar_one()
                receipt = (
                    await conn.execute(
                        text(
                            "INSERT INTO billing.cash_receipts (counter_id, receipt_no, shift_id, payment_id, amount) "
                            "VALUES (:c, :n, :s, :p, :m) RETURNING *"
                        ),
                        {"c": shift.counter_id, "n": number, "s": shift_id, "p": payment["payment_id"], "m": amount},
                    )
                ).one()
        return {
            "receipt_no": receipt_number(receipt.counter_id, receipt.receipt_no),
            "counter_id": receipt.counter_id,
            "shift_id": receipt.shift_id,
            "issued_at": receipt.issued_at,
            "payment": payment,
        }

    async def close_shift(self, shift_id: uuid.UUID, closed_by: str, counted_cash: Decimal) -> dict[str, Any]:
        """Close a shift once; closing it again with the same count returns the same summary."""
        async with self._engine.begin() as conn:
            shift = await self._shift_row(conn, shift_id, lock=True)
            if shift.closed_at is None:
                await conn.execute(
                    text(
                        "UPDATE billing.cash_shifts SET closed_at = now(), counted_cash = :n, closed_by = :b WHERE shift_id = :s"
                    ),
                    {"n": counted_cash, "b": closed_by, "s": shift_id},
                )
            elif shift.counted_cash != counted_cash:
                raise Conflict(f"shift already closed with {shift.counted_cash} counted", code="shift_closed")
        return await self.shift(shift_id)

    async def shift(self, shift_id: uuid.UUID) -> dict[str, Any]:
        """A shift with its receipts and totals: expected cash = opening float + takings."""
        async with self._engine.connect() as conn:
            shift = await self._shift_row(conn, shift_id)
            receipts = (
                await conn.execute(
                    text(
                        "SELECT r.counter_id, r.receipt_no, r.amount, r.issued_at, r.payment_id, p.account_id "
                        "FROM billing.cash_receipts r JOIN billing.payments p USING (payment_id) "
                        "WHERE r.shift_id = :s ORDER BY r.receipt_no"
                    ),
                    {"s": shift_id},
                )
            ).all()
        takings = sum((r.amount for r in receipts), Decimal("0.00"))
        expected = shift.opening_float + takings
        return {
            "shift_id": shift.shift_id,
            "counter_id": shift.counter_id,
            "cashier": shift.cashier,
            "opened_at": shift.opened_at,
            "closed_at": shift.closed_at,
            "closed_by": shift.closed_by,
            "opening_float": shift.opening_float,
            "receipt_count": len(receipts),
            "takings": takings,
            "expected_cash": expected,
            "counted_cash": shift.counted_cash,
            "difference": None if shift.counted_cash is None else shift.counted_cash - expected,
            "receipts": [
                {
                    "receipt_no": receipt_number(r.counter_id, r.receipt_no),
                    "amount": r.amount,
                    "account_id": r.account_id,
                    "payment_id": r.payment_id,
                    "issued_at": r.issued_at,
                }
                for r in receipts
            ],
        }

    @staticmethod
    async def _shift_row(conn: AsyncConnection, shift_id: uuid.UUID, *, lock: bool = False) -> Any:
        row = (
            await conn.execute(
                text("SELECT * FROM billing.cash_shifts WHERE shift_id = :s" + (" FOR UPDATE" if lock else "")),
                {"s": shift_id},
            )
        ).first()
        if row is None:
            raise NotFound(f"no shift {shift_id}")
        return row
