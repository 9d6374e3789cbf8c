"""Billing's side of the gateway contract: single objects the gateway scopes by estate and version-checks."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from shuidian_shared.money import Money


class MeterBindingOut(BaseModel):
    """A meter's binding in force (or the latest one to come): whom it bills and the estate it is in."""

    meter_id: str
    utility: str
    account_id: str | None = Field(description="bound to an account directly")
    room_id: str | None = Field(description="installed in a room: it bills the room's household")
    common_estate_id: str | None = Field(description="a common meter (公摊) of this estate")
    estate_id: str | None = Field(description="the estate the meter is in, whichever way it is bound")
    valid_from: datetime | None
    valid_to: datetime | None


class LatestReadingOut(BaseModel):
    """The last register values billing has priced for a meter (its watermarks)."""

    meter_id: str
    sampled_at: datetime
    registers: dict[str, Decimal]


class EstateMetersOut(BaseModel):
    estate_id: str
    meters: list[str] = Field(description="meters bound now to the estate's rooms, accounts or common use")


class TenantRecordOut(BaseModel):
    tenant_id: str
    name: str
    phone: str


class BuildingRecordOut(BaseModel):
    building_id: str
    estate_id: str
    name: str


class FloorRecordOut(BaseModel):
    floor_id: str
    building_id: str
    estate_id: str
    level: int


class RoomMeterOut(BaseModel):
    room_id: str
    meter_id: str
    utility: str
    estate_id: str
    valid_from: datetime | None
    valid_to: datetime | None


class TariffVersionOut(BaseModel):
    tariff_id: int
    effective_from: datetime
    unit_price: Decimal | None = Field(description="a flat price; None when the version has components")


class TariffOut(BaseModel):
    utility: str
    versions: list[TariffVersionOut]


class TenantLeaseOut(BaseModel):
    lease_id: str
    room_id: str
    account_id: str
    move_in: date
    move_out: date | None


class TenantLeasesOut(BaseModel):
    """Every lease of a tenant, ended ones too (a moved-out tenant still reads their final statements)."""

    tenant_id: str
    leases: list[TenantLeaseOut]


class RoomLeaseOut(BaseModel):
    lease_id: str
    tenant_id: str
    room_id: str
    account_id: str
    move_in: date
    move_out: date | None


class RoomBindingOut(BaseModel):
    meter_id: str
    utility: str
    valid_from: datetime | None
    valid_to: datetime | None


class RoomDetailOut(BaseModel):
    """A room with its estate, every lease of it and every meter binding (staff see all; the gateway shows a
    tenant only their own leases)."""

    room_id: str
    floor_id: str
    code: str
    area_m2: Decimal
    household_size: int
    building_id: str
    estate_id: str
    leases: list[RoomLeaseOut]
    meters: list[RoomBindingOut]


class PaymentRef(BaseModel):
    """A payment a provider's notification credited."""

    payment_id: uuid.UUID
    account_id: str
    amount: Money
    channel: str
    reference: str | None
    balance_after: Money
    txn_id: uuid.UUID
    replayed: bool


class NotifyOut(BaseModel):
    """Billing's answer to a provider notification (and to the sandbox paying an order): WeChat Pay's
    `{"code": "SUCCESS"}` with what it did."""

    code: str = "SUCCESS"
    message: str = "成功"
    outcome: str
    order_id: str | None
    payment: PaymentRef | None


class CallbackOut(BaseModel):
    """A provider notification billing received, with its verdict (the audit of callbacks)."""

    callback_id: int
    provider: str
    outcome: str
    reason: str
    order_id: str | None
    provider_txn_id: str | None
    payment_id: uuid.UUID | None
    remote: str | None
    received_at: datetime


class ReconciliationDifference(BaseModel):
    """One line where a provider's daily bill and the ledger disagree."""

    problem: str = Field(description="missing (settled, not booked), extra (booked, not settled) or amount")
    line: str = Field(description="payment or refund")
    key: str = Field(description="provider transaction id (payment) or our refund number (refund)")
    order_id: str
    settled: Money | None
    booked: Money | None


class ReconciliationOut(BaseModel):
    """A provider's bill of one local day matched against the ledger (对账)."""

    provider: str
    bill_date: date
    settled_payments: Money
    settled_refunds: Money
    booked_payments: Money
    booked_refunds: Money
    lines: int
    differences: list[ReconciliationDifference]
    balanced: bool
    run_at: datetime
