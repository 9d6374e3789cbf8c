"""HTTP surface of the payment channels (staff routes; the provider notification routes are public
and authenticated by their signatures). Money travels as decimal strings."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from shuidian_billing.adapters.payments.bank import MAX_STATEMENT_BYTES, StatementInvalid
from shuidian_billing.api.deps import ChannelsDep
from shuidian_billing.api.payment_schemas import (
    ImportOut,
    OrderOut,
    PaymentMethodOut,
    ReceiptOut,
    RefundOut,
    ReviewOut,
    SettlementOut,
    ShiftOut,
)
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts.billing import CallbackOut, NotifyOut, ReconciliationOut
from shuidian_shared.messages import Identifier
from shuidian_shared.money import Money

router = APIRouter(prefix="/v1", tags=["payments"])

IdempotencyKey = Annotated[str, Header(min_length=8, max_length=100, description="retries with the same key are safe")]
Provider = Literal["wechat", "alipay", "sandbox"]
Staff = Annotated[str, Field(min_length=1, max_length=100)]


def replayable(result: dict[str, Any], replayed: bool, response: Response) -> dict[str, Any]:
    """A replay answers 200 with the original result; the first call keeps the route's 201."""
    if replayed:
        response.status_code = 200
    return result


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Provider
    account_id: Identifier
    amount: Money = Field(gt=0)
    method: Literal["native", "jsapi", "h5", "precreate", "wap"] | None = Field(
        default=None, description="the provider's first method when omitted (WeChat native, Alipay precreate)"
    )
    openid: Annotated[str, Field(max_length=128)] = Field(default="", description="JSAPI: the payer's openid")
    client_ip: Annotated[str, Field(max_length=45)] = Field(default="", description="H5: the payer's IP address")


class ShiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    counter_id: Identifier
    cashier: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")
    opening_float: Money = Field(default=Decimal("0.00"), ge=0)


class CashPaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Identifier
    amount: Money = Field(gt=0, le=Decimal("100000"))


class CloseShiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    closed_by: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")
    counted_cash: Money = Field(ge=0)


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Identifier
    kind: Literal["reference", "room"]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Identifier
    operator: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")


class DismissIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money = Field(gt=0)
    operator: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class SettlementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: Staff | None = Field(default=None, description="ignored: who acts is the caller's credential")
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "退租结算 · move-out settlement"


# --- online ---------------------------------------------------------------------------------------


@router.post(
    "/payments/orders", status_code=201, response_model=OrderOut, summary="Create an online payment order (idempotent)"
)
async def create_order(
    body: OrderIn, channels: ChannelsDep, idempotency_key: IdempotencyKey, response: Response
) -> dict[str, Any]:
    order = await channels.online.create_order(
        body.provider,
        body.account_id,
        body.amount,
        idempotency_key,
        method=body.method,
        openid=body.openid,
        client_ip=body.client_ip,
    )
    return replayable(order, order["replayed"], response)


@router.get(
    "/payments/methods",
    response_model=list[PaymentMethodOut],
    summary="支付方式 · Providers an order can be opened at, with their methods",
)
async def payment_methods(
    channels: ChannelsDep, account_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None
) -> list[dict[str, Any]]:
    return await channels.online.methods(account_id)


@router.get("/payments/orders/{order_id}", response_model=OrderOut, summary="An online payment order and its state")
async def get_order(order_id: str, channels: ChannelsDep) -> dict[str, Any]:
    return await channels.online.order(order_id)


@router.post(
    "/payments/notify/{provider}",
    response_model=NotifyOut,
    responses={200: {"content": {"text/plain": {"example": "success"}}, "description": "Alipay gets plain `success`"}},
    summary="Provider asynchronous notification (WeChat Pay v3, Alipay, sandbox); verified by signature",
)
async def notify(provider: Provider, request: Request, channels: ChannelsDep, response: Response) -> Any:
    body = await request.body()
    remote = request.client.host if request.client else None
    result = await channels.online.notify(provider, request.headers, body, remote, datetime.now(UTC))
    payment = result["payment"]
    extra = {"X-Payment-Outcome": result["outcome"]}
    if payment is not None:
        extra["X-Payment-Id"] = str(payment["payment_id"])
    if provider == "alipay":  # Alipay stops retrying only on this exact body
        return PlainTextResponse("success", headers=extra)
    # WeChat Pay and the sandbox only look at the status; the rest is for people reading the log.
    response.headers.update(extra)
    return result


@router.post(
    "/payments/sandbox/orders/{order_id}/pay",
    response_model=NotifyOut,
    summary="Sandbox: the provider pays an order (demo, tests)",
)
async def sandbox_pay(order_id: str, channels: ChannelsDep) -> dict[str, Any]:
    return await channels.online.sandbox_pay(order_id)


@router.post(
    "/payments/reconciliations/{provider}/{bill_date}",
    response_model=ReconciliationOut,
    summary="对账 · Reconcile a provider's bill of one local day with the ledger (runs daily on its own)",
)
async def reconcile(
    provider: Literal["wechat", "alipay", "sandbox"], bill_date: date, channels: ChannelsDep
) -> dict[str, Any]:
    return await channels.online.reconcile(provider, bill_date)


@router.get(
    "/payments/reconciliations",
    response_model=list[ReconciliationOut],
    summary="对账报告 · Settled vs booked per channel and day, newest first",
)
async def reconciliations(
    channels: ChannelsDep,
    bill_date: date | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await channels.online.reconciliations(bill_date, limit)


@router.get(
    "/payments/callbacks",
    response_model=list[CallbackOut],
    summary="Provider notifications received, newest first (audit)",
)
async def callbacks(
    channels: ChannelsDep,
    outcome: Literal["accepted", "replayed", "rejected", "amount_mismatch", "ignored"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await channels.online.callbacks(outcome, limit)


# --- cash -----------------------------------------------------------------------------------------


@router.post("/cash/shifts", status_code=201, response_model=ShiftOut, summary="Open a cashier shift at a counter")
async def open_shift(body: ShiftIn, channels: ChannelsDep, actor: Acting) -> dict[str, Any]:
    return await channels.cash.open_shift(body.counter_id, actor, body.opening_float)


@router.get("/cash/shifts/{shift_id}", response_model=ShiftOut, summary="A shift with its receipts and totals")
async def get_shift(shift_id: uuid.UUID, channels: ChannelsDep) -> dict[str, Any]:
    return await channels.cash.shift(shift_id)


@router.post(
    "/cash/shifts/{shift_id}/payments",
    status_code=201,
    response_model=ReceiptOut,
    summary="Take a cash payment, issue a receipt (idempotent)",
)
async def cash_payment(
    shift_id: uuid.UUID, body: CashPaymentIn, channels: ChannelsDep, idempotency_key: IdempotencyKey, response: Response
) -> dict[str, Any]:
    receipt = await channels.cash.take_payment(shift_id, body.account_id, body.amount, idempotency_key)
    return replayable(receipt, receipt["payment"]["replayed"], response)


@router.post("/cash/shifts/{shift_id}/close", response_model=ShiftOut, summary="Close a shift with the counted cash")
async def close_shift(shift_id: uuid.UUID, body: CloseShiftIn, channels: ChannelsDep, actor: Acting) -> dict[str, Any]:
    return await channels.cash.close_shift(shift_id, actor, body.counted_cash)


# --- bank -----------------------------------------------------------------------------------------


@router.put("/payments/aliases/{alias}", status_code=204, summary="Register a payment reference or room code")
async def put_alias(alias: Identifier, body: AliasIn, channels: ChannelsDep) -> Response:
    await channels.bank.put_alias(alias, body.account_id, body.kind)
    return Response(status_code=204)


@router.post(
    "/payments/bank/imports",
    status_code=201,
    response_model=ImportOut,
    summary="Import a bank statement CSV (body: text/csv, UTF-8 or GB18030)",
)
async def import_statement(
    request: Request,
    channels: ChannelsDep,
    imported_by: Annotated[str, Query(min_length=1, max_length=100)],
    filename: Annotated[str, Query(max_length=200)] = "statement.csv",
) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_STATEMENT_BYTES:
            raise StatementInvalid(f"statement larger than {MAX_STATEMENT_BYTES} bytes", status_code=413)
    return await channels.bank.import_statement(filename, bytes(body), imported_by)


@router.get("/payments/reviews", response_model=list[ReviewOut], summary="The payment review queue")
async def reviews(
    channels: ChannelsDep,
    status: Literal["open", "assigned", "dismissed"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await channels.reviews.items(status, limit)


@router.post(
    "/payments/reviews/{review_id}/assign", response_model=ReviewOut, summary="Credit a review item to an account"
)
async def assign(review_id: int, body: AssignIn, channels: ChannelsDep, actor: Acting) -> dict[str, Any]:
    return await channels.reviews.assign(review_id, body.account_id, actor)


@router.post(
    "/payments/reviews/{review_id}/dismiss", response_model=ReviewOut, summary="Close a review item without crediting"
)
async def dismiss(review_id: int, body: DismissIn, channels: ChannelsDep, actor: Acting) -> dict[str, Any]:
    return await channels.reviews.dismiss(review_id, actor, body.reason)


# --- refunds --------------------------------------------------------------------------------------


@router.post(
    "/payments/{payment_id}/refunds",
    status_code=201,
    response_model=RefundOut,
    summary="Refund (part of) a payment (idempotent)",
)
async def refund(
    payment_id: uuid.UUID,
    body: RefundIn,
    channels: ChannelsDep,
    idempotency_key: IdempotencyKey,
    response: Response,
    actor: Acting,
) -> dict[str, Any]:
    result = await channels.refunds.refund(payment_id, body.amount, actor, body.reason, idempotency_key)
    return replayable(result, result["replayed"], response)


@router.get("/payments/{payment_id}/refunds", response_model=list[RefundOut], summary="Refunds of a payment")
async def refunds_of(payment_id: uuid.UUID, channels: ChannelsDep) -> list[dict[str, Any]]:
    return await channels.refunds.of_payment(payment_id)


@router.post(
    "/accounts/{account_id}/settlement",
    status_code=201,
    response_model=SettlementOut,
    summary="Move-out settlement: refund the remaining credit",
)
async def settle(
    account_id: str,
    body: SettlementIn,
    channels: ChannelsDep,
    idempotency_key: IdempotencyKey,
    response: Response,
    actor: Acting,
) -> dict[str, Any]:
    result = await channels.refunds.settle(account_id, actor, body.reason, idempotency_key)
    return replayable(result, result["replayed"], response)
