"""Response shapes of the payment routes (money as decimal strings), for the OpenAPI document and
so every response is validated on its way out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shuidian_shared.contracts.billing import (
    PaymentRef,
)
from shuidian_shared.money import Money


class OrderOut(BaseModel):
    order_id: str
    provider: str
    method: str = Field(description="native, jsapi or h5 (WeChat Pay); precreate or wap (Alipay)")
    account_id: str
    amount: Money
    status: str = Field(description="open, paid, closed (by the provider) or expired (closed by us)")
    provider_txn_id: str | None
    payment_id: uuid.UUID | None
    created_at: datetime
    paid_at: datetime | None
    expires_at: datetime
    closed_at: datetime | None = None
    pay: dict[str, Any] | None = Field(
        description="what the payer's app needs: code_url (Native), h5_url (H5), the signed JSAPI package "
        "(appId, timeStamp, nonceStr, package, signType, paySign), qr_code (Alipay precreate) or pay_url "
        "(Alipay wap); null while the provider has not been reached"
    )
    replayed: bool = False


class PaymentMethodOut(BaseModel):
    provider: str = Field(description="wechat, alipay or sandbox")
    methods: list[str] = Field(description="in the provider's order: the QR-code method first")


class ReceiptLine(BaseModel):
    receipt_no: str
    amount: Money
    account_id: str
    payment_id: uuid.UUID
    issued_at: datetime


class ShiftOut(BaseModel):
    shift_id: uuid.UUID
    counter_id: str
    cashier: str
    opened_at: datetime
    closed_at: datetime | None
    closed_by: str | None
    opening_float: Money
    receipt_count: int
    takings: Money
    expected_cash: Money
    counted_cash: Money | None
    difference: Money | None
    receipts: list[ReceiptLine]


class ReceiptOut(BaseModel):
    receipt_no: str
    counter_id: str
    shift_id: uuid.UUID
    issued_at: datetime
    payment: PaymentRef


class ImportLine(BaseModel):
    line_no: int
    status: str
    line_key: str
    amount: Money | None = None
    account_id: str | None = None
    payment_id: uuid.UUID | None = None
    reason: str = ""


class ImportOut(BaseModel):
    import_id: uuid.UUID
    lines: int
    skipped_debits: int
    matched: int
    review: int
    duplicate: int
    results: list[ImportLine]


class ReviewOut(BaseModel):
    review_id: int
    kind: str
    subject: str
    amount: Money
    reason: str
    detail: dict[str, Any]
    status: str
    account_id: str | None
    payment_id: uuid.UUID | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime
    payment: PaymentRef | None = None


class RefundOut(BaseModel):
    refund_id: uuid.UUID
    payment_id: uuid.UUID
    account_id: str
    channel: str
    amount: Money
    txn_id: uuid.UUID
    operator: str
    reason: str
    created_at: datetime
    provider_status: str | None = Field(
        default=None,
        description="online payments: pending (not yet accepted by the provider), processing, success or failed "
        "(held for review); null for other channels",
    )
    replayed: bool


class SettlementOut(BaseModel):
    settlement_id: uuid.UUID
    account_id: str
    refundable_before: Money
    refunded: Money
    not_refunded: Money
    paid_balance_after: Money
    subsidy_kept: Money
    refunds: list[RefundOut]
    operator: str
    reason: str
    replayed: bool
