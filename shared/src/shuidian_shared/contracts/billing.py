"""Billing's side of the gateway contract: single objects the gateway scopes by estate and version-checks, and
every answer the gateway forwards (accounts, payments, cash shifts, usage, statements, reports, settlements).

The models written like billing's own (`api/*.py`) are checked field by field against billing's OpenAPI
(test_gateway_contracts.py); the statement, the explanation and the month run are answers billing builds as
plain JSON, described here from the code that builds them."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from shuidian_shared.contracts.tariff_plans import PlanUsed
from shuidian_shared.messages import Utility
from shuidian_shared.money import Money, Quantity


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


# -- premises, accounts and the ledger -----------------------------------------------------------------------
class EstateOut(BaseModel):
    """An estate with its counts."""

    estate_id: str
    name: str
    shared_balance: bool = Field(description="水电一卡通: water and electricity share one balance")
    shared_basis: str = Field(description="how 公摊 is shared: area or equal")
    buildings: int
    rooms: int
    occupied_rooms: int = Field(description="rooms with a lease active now")
    created_at: datetime


class PurseOut(BaseModel):
    purse: str = Field(description="'all' (水电一卡通) or the utility of a separate balance")
    paid: Money
    subsidy: Money
    pending: Quantity = Field(description="charges accrued or carried, not yet posted")
    available: Quantity


class AccountOut(BaseModel):
    """A household account: its balances, level and purses."""

    account_id: str
    name: str
    estate_id: str | None
    balance: Money = Field(description="paid + subsidy credit posted to the ledger")
    paid_balance: Money
    subsidy_balance: Money
    available: Quantity
    level: str
    sequence: int
    grace_credit: Money
    purses: list[PurseOut]


class PaymentOut(PaymentRef):
    """A payment booked to an account (a top-up)."""


class SubsidyOut(BaseModel):
    subsidy_id: uuid.UUID
    account_id: str
    amount: Money
    program: str
    txn_id: uuid.UUID
    replayed: bool


class CorrectionOut(BaseModel):
    """A 冲正: the transaction that reverses another."""

    txn_id: uuid.UUID
    reverses: uuid.UUID
    operator: str
    reason: str
    created_at: datetime | None = None


class MeterEventOut(BaseModel):
    """What a meter event (replaced, multiplier changed, rollover) billed."""

    meter_id: str
    kind: str
    billed: Quantity
    register_value: Quantity


class ScopeOut(BaseModel):
    """What a tenant's active leases cover."""

    tenant_id: str
    accounts: list[str]
    rooms: list[str]
    meters: list[str]


class LeaseOut(BaseModel):
    lease_id: str
    tenant_id: str
    room_id: str
    account_id: str
    move_in: date
    move_out: date | None


class LeaseWithEstateOut(LeaseOut):
    estate_id: str


class TariffVersionAdded(BaseModel):
    tariff_id: int
    effective_from: datetime = Field(description="when it takes effect: never before now once a utility has a tariff")


# -- usage ------------------------------------------------------------------------------------------------------
class UsageBucket(BaseModel):
    start: str = Field(description="local start of the hour, day or month, with its UTC offset")
    utility: str
    quantity: Quantity
    unit: str
    cost: Quantity = Field(description="exact, before rounding to the fen")
    hours: int = Field(description="hours with usage in the bucket")


class AccountUsageOut(BaseModel):
    """An account's usage history per local hour, day or month and utility."""

    account_id: str
    granularity: str
    timezone: str
    start: str
    end: str
    buckets: list[UsageBucket]


class MeterUsageOut(BaseModel):
    """A meter's usage history with its totals."""

    meter_id: str
    granularity: str
    timezone: str
    start: str
    end: str
    buckets: list[UsageBucket]
    total_quantity: Quantity
    total_cost: Quantity


# -- the month run, the statement and the explanation: plain JSON billing builds -----------------------------------
class FixedFeeLine(BaseModel):
    lease_id: str
    account_id: str
    utility: str
    component: str
    month: str
    days: int = Field(description="days of the month the lease covered")
    days_in_month: int
    exact: str = Field(description="the pro-rated fee before rounding to the fen")
    amount: str = Field(description="CNY posted")


class MonthRunOut(BaseModel):
    """What a month's run posted for an estate: fixed fees and 公摊 per account (a repeat returns the first run)."""

    estate_id: str
    month: str
    fixed_fees: dict[str, str] = Field(description="CNY of fixed fees per account")
    fixed_fee_lines: list[FixedFeeLine]
    shared_area: dict[str, dict[str, str]] = Field(description="公摊 CNY per utility, then per account")
    shared_area_waived: dict[str, dict[str, str]] = Field(
        description="公摊 left on the estate for households settled at move-out, per utility and account"
    )
    replayed: bool


class StatementPurse(BaseModel):
    purse: str = Field(description="the ledger account of the purse")
    opening: Money
    closing: Money


class StatementTotals(BaseModel):
    payments: Money
    subsidies: Money
    charges: Money
    fees: Money
    refunds: Money
    corrections: Money
    other: Money


class StatementUsage(BaseModel):
    utility: str
    quantity: Quantity
    unit: str
    charged: Money


class TariffBreakdownLine(BaseModel):
    utility: str
    tariff_id: int
    tariff_effective_from: datetime
    component: str
    label: str = Field(description="the time-of-use segment or tier")
    unit_price: Quantity
    quantity: Quantity
    unit: str
    amount_exact: Quantity


class StatementLine(BaseModel):
    entry_id: int
    txn_id: uuid.UUID
    at: str = Field(description="local time with its UTC offset")
    amount: Money
    purse: str
    channel: str | None
    reference: str | None
    payment_id: uuid.UUID | None
    memo: str


class StatementLines(BaseModel):
    """The month's ledger lines by section (hourly charges are summarised in `usage`, not listed)."""

    payments: list[StatementLine]
    subsidies: list[StatementLine]
    charges: list[StatementLine]
    fees: list[StatementLine]
    refunds: list[StatementLine]
    corrections: list[StatementLine]
    other: list[StatementLine]


class StatementOut(BaseModel):
    """A household account's month: opening + movements = closing, to the fen."""

    account_id: str
    name: str
    month: str
    timezone: str
    period_start: str
    period_end: str
    opening_balance: Money
    closing_balance: Money
    purses: list[StatementPurse]
    totals: StatementTotals
    charges_by_utility: dict[str, Money]
    usage: list[StatementUsage]
    tariff_breakdown: list[TariffBreakdownLine]
    lines: StatementLines
    reconciles: bool


class ExplainedEntry(BaseModel):
    ledger_account: str
    amount: Money
    meter_id: str | None


class ExplainedPayment(BaseModel):
    payment_id: uuid.UUID
    channel: str
    reference: str | None
    amount: Money
    created_at: datetime


class ExplainedRefund(BaseModel):
    refund_id: uuid.UUID
    payment_id: uuid.UUID
    channel: str
    amount: Money
    operator: str
    reason: str


class TariffVersionUsed(BaseModel):
    plan: PlanUsed | None = Field(
        default=None, description="the tariff plan this version belongs to, and why it applied"
    )
    effective_from: datetime
    flat_unit_price: Quantity | None
    components: list[dict[str, Any]] | None = Field(description="the version's components (docs/billing.md)")


class ExplainedReadings(BaseModel):
    register_from: Quantity
    register_to: Quantity
    first_sample: str
    last_sample: str


class ExplainedLine(BaseModel):
    tariff_id: int
    utility: str
    tariff_effective_from: datetime
    component: str
    segment_or_tier: str
    unit_price: Quantity
    quantity: Quantity
    unit: str
    amount_exact: Quantity
    readings: ExplainedReadings


class ExplanationOut(BaseModel):
    """Why a ledger transaction moved what it moved. For an hour's consumption charge: the readings, the tariff
    version, component, segment or tier, quantity and price, and the rounding; otherwise the payment or refund."""

    txn_id: uuid.UUID
    kind: str
    booked_at: str
    memo: str
    reverses: uuid.UUID | None
    entries: list[ExplainedEntry]
    payment: ExplainedPayment | None = Field(default=None, description="not a consumption charge: the payment")
    refund: ExplainedRefund | None = Field(default=None, description="not a consumption charge: the refund")
    meter_id: str | None = Field(default=None, description="a consumption charge: the meter")
    account_id: str | None = None
    hour_start: str | None = None
    posted: Money | None = Field(default=None, description="CNY posted, in whole fen")
    exact: Quantity | None = Field(default=None, description="the exact cost of the hour")
    priced_under: list[PlanUsed] | None = Field(
        default=None,
        description="每个计价版本所属的价格方案及原因 · the plan and reason of each tariff version that priced it",
    )
    tariff_versions: dict[str, TariffVersionUsed] | None = Field(default=None, description="by tariff_id")
    rounding_note_zh: str | None = None
    rounding_note: str | None = None
    lines: list[ExplainedLine] | None = None


# -- reports ------------------------------------------------------------------------------------------------
class RevenueFigures(BaseModel):
    payments: Money = Field(description="top-ups received (缴费)")
    refunds: Money = Field(description="refunds paid out (退款)")
    corrections: Money = Field(description="冲正 of payments or refunds (signed: money in is positive)")
    net: Money = Field(description="payments − refunds + corrections: the channel account's ledger movement, negated")
    count: int = Field(description="number of top-ups")


class RevenueDay(RevenueFigures):
    day: str = Field(description="local date")
    channel: str


class RevenueChannel(RevenueFigures):
    channel: str
    channel_zh: str


class RevenueOut(BaseModel):
    estate_id: str | None
    timezone: str
    start: str
    end: str
    days: list[RevenueDay]
    channels: list[RevenueChannel]
    total: RevenueFigures
    summary_zh: str
    summary_en: str


class ConsumptionRow(BaseModel):
    estate_id: str | None
    kind: str = Field(description="building (rooms' meters), common (公摊 meters of the estate) or unassigned")
    building_id: str | None
    building_name: str | None
    utility: Utility
    unit: str
    meters: int
    quantity: Quantity
    cost: Quantity = Field(description="exact, before rounding to the fen")


class SharedAreaRow(BaseModel):
    estate_id: str
    building_id: str | None
    building_name: str | None
    amount: Money = Field(description="公摊 posted to the building's households for months starting in the window")


class ConsumptionReportOut(BaseModel):
    estate_id: str | None
    utility: Utility | None
    timezone: str
    start: str
    end: str
    rows: list[ConsumptionRow]
    totals: list[ConsumptionRow] = Field(description="one row per utility over every building")
    shared_area: list[SharedAreaRow]
    summary_zh: str
    summary_en: str


class CollectionRow(BaseModel):
    estate_id: str | None
    estate_name: str | None
    billable: Money = Field(description="应收: usage, fixed fees and 公摊 charged to households, net of their 冲正")
    collected: Money = Field(description="实收: households' top-ups net of refunds and their 冲正")
    subsidies: Money = Field(description="补贴 credited (not counted as collected)")
    collection_rate: Decimal | None = Field(description="collected ÷ billable to 4 places; null when nothing billable")
    collection_rate_percent: str | None = Field(examples=["97.31%"])
    households_billed: int
    households_paid: int


class CollectionOut(BaseModel):
    month: str
    timezone: str
    start: str
    end: str
    estates: list[CollectionRow]
    total: CollectionRow
    summary_zh: str
    summary_en: str


# -- payments: orders, cash shifts, bank imports, reviews, refunds ----------------------------------------------
class OrderOut(BaseModel):
    """An online payment order."""

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
        description="what the payer's app needs (code_url, h5_url, the signed JSAPI package, qr_code or pay_url); "
        "null while the provider has not been reached"
    )
    replayed: bool = False


class ReceiptLine(BaseModel):
    receipt_no: str
    amount: Money
    account_id: str
    payment_id: uuid.UUID
    issued_at: datetime


class ShiftOut(BaseModel):
    """A cashier's shift at a counter: its float, takings and (once closed) the counted cash."""

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
    """A cash payment's receipt."""

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
    """A bank statement's import: each credit matched to an account, held for review or a duplicate."""

    import_id: uuid.UUID
    lines: int
    skipped_debits: int
    matched: int
    review: int
    duplicate: int
    results: list[ImportLine]


class ReviewOut(BaseModel):
    """A payment held for review (an unmatched bank credit, a failed refund), and how it was resolved."""

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


# -- move-out settlement -----------------------------------------------------------------------------------------
class FinalReadingOut(BaseModel):
    meter_id: str
    utility: str
    source: Literal["meter", "closing_value"]
    value: Quantity | None = Field(description="the register at or after the move-out instant")
    sampled_at: datetime | None
    operator: str | None = Field(description="who entered a closing value")
    billed_through_register: Quantity | None = Field(description="the register the household was billed up to")


class SettlementConsumptionOut(BaseModel):
    utility: str
    component: str
    quantity: Quantity
    amount_exact: Quantity


class FeeOut(BaseModel):
    month: str
    utility: str
    component: str
    days: int
    days_in_month: int
    amount: Money
    posted_by: Literal["monthly_run", "settlement"]


class FinalBillOut(BaseModel):
    period_start: datetime
    period_end: datetime
    consumption: list[SettlementConsumptionOut] = Field(
        description="usage charged to the household in the final period, exact"
    )
    fixed_fees: list[FeeOut] = Field(description="the final month's fixed fees, pro-rated to the days leased")


class RefundSummaryOut(BaseModel):
    settlement_id: uuid.UUID
    refundable_before: Money
    refunded: Money
    not_refunded: Money
    paid_balance_after: Money
    subsidy_kept: Money = Field(description="subsidy (补贴) credit is never refunded")
    refunds: list[RefundOut]


class SettlementBalanceOut(BaseModel):
    paid: Money
    subsidy: Money
    pending: Quantity
    available: Quantity


class LeaseSettlementOut(BaseModel):
    """A lease's move-out settlement (退租结算): final readings, final bill, refund and closing balance."""

    settlement_id: uuid.UUID
    lease_id: str
    account_id: str
    room_id: str
    tenant_id: str
    move_in: date
    move_out: date
    moved_out_at: datetime
    final_readings: list[FinalReadingOut]
    final_bill: FinalBillOut
    refund: RefundSummaryOut
    closing_balance: SettlementBalanceOut
    arrears: Money = Field(description="what the household still owes: left on the ledger as a receivable")
    operator: str
    reason: str
    replayed: bool


class UnknownMeterOut(BaseModel):
    meter_id: str
    utility: str
    gateway_id: str
    readings: int = Field(description="readings received and not billed since this process started")
    first_seen: datetime
    last_seen: datetime = Field(description="when billing last received one of its readings")
    last_sampled_at: datetime
    last_registers: dict[str, Quantity]


class UnknownMetersOut(BaseModel):
    """Meters whose readings reach billing with nobody to bill (per billing replica, since it started)."""

    since: datetime = Field(description="counted since this billing process started (per replica)")
    meters: list[UnknownMeterOut]
