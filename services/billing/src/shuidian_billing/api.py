"""Billing's HTTP API: accounts, meter bindings, tariffs, top-ups and the ledger."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shuidian_billing.billing import Billing
from shuidian_shared.messages import AwareDatetime, Identifier, Utility
from shuidian_shared.money import Money, Quantity

router = APIRouter(prefix="/v1", tags=["billing"])


def _billing(request: Request) -> Billing:
    billing: Billing = request.app.state.billing
    return billing


Service = Annotated[Billing, Depends(_billing)]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    low_1: Money = Field(default=Decimal("20.00"), description="first low-balance warning level")
    low_2: Money = Field(default=Decimal("5.00"), description="second low-balance warning level")
    grace_credit: Money = Field(default=Decimal("0.00"), description="overdraft allowed before supply is cut")


class AccountOut(BaseModel):
    account_id: str
    name: str
    balance: Money
    available: Quantity
    level: str
    sequence: int


class BindingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Identifier
    utility: Utility


class TariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_price: Quantity = Field(description="CNY per kWh or m³")
    effective_from: AwareDatetime


class TopUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money
    channel: str = "cash"
    reference: str | None = Field(default=None, max_length=100)


class PaymentOut(BaseModel):
    payment_id: uuid.UUID
    account_id: str
    amount: Money
    channel: str
    reference: str | None
    balance_after: Money
    txn_id: uuid.UUID
    replayed: bool


class EntryOut(BaseModel):
    entry_id: int
    txn_id: uuid.UUID
    amount: Money
    kind: str
    meter_id: str | None
    period_start: datetime | None
    reverses: uuid.UUID | None
    memo: str
    created_at: datetime


@router.put("/accounts/{account_id}", status_code=204, summary="Create or update an account")
async def put_account(account_id: Identifier, body: AccountIn, billing: Service) -> None:
    await billing.put_account(account_id, body.name, body.low_1, body.low_2, body.grace_credit)


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="Balance and level")
async def get_account(account_id: str, billing: Service) -> dict[str, Any]:
    return await billing.account(account_id)


@router.put("/meters/{meter_id}/binding", status_code=204, summary="Bind a meter to an account")
async def bind(meter_id: Identifier, body: BindingIn, billing: Service) -> None:
    await billing.bind_meter(meter_id, body.account_id, body.utility)


@router.put("/tariffs/{utility}", status_code=204, summary="Set a flat price from a date on")
async def tariff(utility: Utility, body: TariffIn, billing: Service) -> None:
    await billing.set_tariff(utility, body.unit_price, body.effective_from)


@router.post("/accounts/{account_id}/topups", status_code=201, response_model=PaymentOut, summary="Top up (idempotent)")
async def top_up(
    account_id: str,
    body: TopUpIn,
    billing: Service,
    idempotency_key: Annotated[str, Header(min_length=8, max_length=100)],
) -> dict[str, Any]:
    return await billing.top_up(account_id, body.amount, body.channel, body.reference, idempotency_key)


@router.get("/accounts/{account_id}/ledger", response_model=list[EntryOut], summary="Ledger entries, newest first")
async def ledger(
    account_id: str, billing: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await billing.ledger(account_id, limit)
