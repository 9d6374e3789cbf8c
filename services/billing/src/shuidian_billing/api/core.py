"""Billing's HTTP API: premises and people, accounts, meter bindings and events, tariff versions,
top-ups, subsidies, corrections (冲正) and the ledger."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from shuidian_billing.adapters.periodic import parse_month
from shuidian_billing.api import listings, reports, tariffs
from shuidian_billing.api.deps import BillingDep, PeriodsDep, PremisesDep
from shuidian_billing.domain import BillingDomainError, consumption
from shuidian_billing.domain.estate_csv import CSV_COLUMNS
from shuidian_billing.domain.tariff_config import ComponentIn
from shuidian_billing.errors import BillingError
from shuidian_kit.service_auth import Acting
from shuidian_shared.contracts import billing as contracts
from shuidian_shared.contracts.billing import UnknownMetersOut
from shuidian_shared.messages import AwareDatetime, Identifier, Utility
from shuidian_shared.money import Money, Quantity

router = APIRouter(prefix="/v1", tags=["billing"])


IdempotencyKey = Annotated[str, Header(min_length=8, max_length=100)]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    low_1: Money = Field(default=Decimal("20.00"), description="first low-balance warning level")
    low_2: Money = Field(default=Decimal("5.00"), description="second low-balance warning level")
    grace_credit: Money = Field(default=Decimal("0.00"), description="overdraft allowed before supply is cut")
    estate_id: Identifier | None = Field(default=None, description="the estate decides whether balances are shared")


class PurseOut(BaseModel):
    purse: str = Field(description="'all' (水电一卡通) or the utility of a separate balance")
    paid: Money
    subsidy: Money
    pending: Quantity = Field(description="charges accrued or carried, not yet posted")
    available: Quantity


class AccountOut(BaseModel):
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


class BindingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: Identifier
    utility: Utility
    effective_from: AwareDatetime | None = Field(
        default=None, description="when the meter starts billing this account (default: now, or always for a new meter)"
    )


class TariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_price: Quantity = Field(description="CNY per kWh or m³")
    effective_from: AwareDatetime


class TopUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money
    channel: str = "cash"
    reference: str | None = Field(default=None, max_length=100)
    utility: Utility | None = Field(default=None, description="which balance, when the estate keeps them separate")


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
    ledger_account: str
    amount: Money
    kind: str
    meter_id: str | None
    period_start: datetime | None
    reverses: uuid.UUID | None
    memo: str
    created_at: datetime


@router.put("/accounts/{account_id}", status_code=204, summary="Create or update an account")
async def put_account(account_id: Identifier, body: AccountIn, billing: BillingDep) -> None:
    await billing.accounts.put_account(account_id, body.name, body.low_1, body.low_2, body.grace_credit, body.estate_id)


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="Balance and level")
async def get_account(account_id: str, billing: BillingDep) -> dict[str, Any]:
    return await billing.accounts.account(account_id)


@router.put("/meters/{meter_id}/binding", status_code=204, summary="Bind a meter to an account")
async def bind(meter_id: Identifier, body: BindingIn, billing: BillingDep) -> None:
    await billing.accounts.bind_meter(meter_id, body.account_id, body.utility, body.effective_from)


@router.put("/tariffs/{utility}", status_code=204, summary="Set a flat price from a date on")
async def tariff(utility: Utility, body: TariffIn, billing: BillingDep) -> None:
    await billing.tariffs.set_tariff(utility, body.unit_price, body.effective_from)


@router.post("/accounts/{account_id}/topups", status_code=201, response_model=PaymentOut, summary="Top up (idempotent)")
async def top_up(
    account_id: str,
    body: TopUpIn,
    billing: BillingDep,
    idempotency_key: Annotated[str, Header(min_length=8, max_length=100)],
) -> dict[str, Any]:
    return await billing.credits.top_up(
        account_id, body.amount, body.channel, body.reference, idempotency_key, utility=body.utility
    )


@router.get("/accounts/{account_id}/ledger", response_model=list[EntryOut], summary="Ledger entries, newest first")
async def ledger(
    account_id: str, billing: BillingDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await billing.accounts.ledger(account_id, limit)


# --- tariff versions -------------------------------------------------------------------------


class TariffVersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effective_from: AwareDatetime
    components: tuple[ComponentIn, ...] = Field(min_length=1)


class TariffVersionOut(BaseModel):
    tariff_id: int
    utility: Utility
    effective_from: datetime
    components: list[dict[str, Any]]


class TariffVersionAdded(BaseModel):
    tariff_id: int
    effective_from: datetime = Field(description="when it takes effect: never before now once a utility has a tariff")


@router.post(
    "/tariffs/{utility}/versions",
    status_code=201,
    response_model=TariffVersionAdded,
    summary="Add a tariff version (flat, TOU, tiered, fees)",
)
async def add_tariff_version(utility: Utility, body: TariffVersionIn, billing: BillingDep) -> dict[str, Any]:
    return await billing.tariffs.put_tariff_version(utility, body.effective_from, body.components)


@router.get("/tariffs/{utility}/versions", response_model=list[TariffVersionOut], summary="Every version, oldest first")
async def tariff_versions(utility: Utility, billing: BillingDep) -> list[dict[str, Any]]:
    return await billing.tariffs.tariff_versions(utility)


# --- subsidies and corrections ---------------------------------------------------------------


class SubsidyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money
    program: str = Field(min_length=1, max_length=100, description="the subsidy programme (补贴项目)")
    utility: Utility | None = None


class SubsidyOut(BaseModel):
    subsidy_id: uuid.UUID
    account_id: str
    amount: Money
    program: str
    txn_id: uuid.UUID
    replayed: bool


@router.post(
    "/accounts/{account_id}/subsidies",
    status_code=201,
    response_model=SubsidyOut,
    summary="Grant subsidy (补贴) credit, used before paid credit (idempotent)",
)
async def subsidy(
    account_id: str, body: SubsidyIn, billing: BillingDep, idempotency_key: IdempotencyKey
) -> dict[str, Any]:
    return await billing.credits.grant_subsidy(
        account_id, body.amount, body.program, idempotency_key, utility=body.utility
    )


class CorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str | None = Field(
        default=None, min_length=1, max_length=100, description="ignored: who acts is the caller's credential"
    )
    reason: str = Field(min_length=1, max_length=500)


class CorrectionOut(BaseModel):
    txn_id: uuid.UUID
    reverses: uuid.UUID
    operator: str
    reason: str
    created_at: datetime | None = None


@router.post(
    "/ledger/transactions/{txn_id}/reversal",
    status_code=201,
    response_model=CorrectionOut,
    summary="冲正: reverse a ledger transaction (once, with operator and reason)",
)
async def reverse(txn_id: uuid.UUID, body: CorrectionIn, billing: BillingDep, actor: Acting) -> dict[str, Any]:
    return await billing.credits.reverse(txn_id, actor, body.reason)


@router.get("/corrections", response_model=list[CorrectionOut], summary="The corrections audit trail, newest first")
async def corrections(
    billing: BillingDep, account_id: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await billing.credits.corrections(account_id, limit)


# --- meter events and held readings ----------------------------------------------------------


class MeterEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["replaced", "multiplier_changed", "rollover"]
    at: AwareDatetime
    operator: str | None = Field(
        default=None, min_length=1, max_length=100, description="ignored: who acts is the caller's credential"
    )
    reason: str = Field(min_length=1, max_length=500)
    old_closing_register: Quantity | None = Field(default=None, description="replaced: the old meter's last reading")
    new_opening_register: Quantity | None = Field(default=None, description="replaced: the new meter's first reading")
    new_multiplier: Quantity | None = Field(default=None, description="replaced or multiplier_changed: the CT ratio")
    new_register_max: Quantity | None = Field(default=None, description="replaced: the new register's maximum")
    register_at_change: Quantity | None = Field(default=None, description="multiplier_changed: the register then")
    register_after: Quantity | None = Field(default=None, description="rollover: the register after the wrap")

    def event(self) -> consumption.MeterEvent:
        def need(value: Decimal | None, name: str) -> Decimal:
            if value is None:
                raise BillingError(f"{self.kind} needs {name}", code="invalid_event", status_code=422)
            return value

        try:
            if self.kind == "replaced":
                return consumption.MeterReplaced(
                    need(self.old_closing_register, "old_closing_register"),
                    need(self.new_opening_register, "new_opening_register"),
                    self.at,
                    self.new_multiplier,
                    self.new_register_max,
                )
            if self.kind == "multiplier_changed":
                return consumption.MultiplierChanged(
                    need(self.new_multiplier, "new_multiplier"),
                    self.at,
                    need(self.register_at_change, "register_at_change"),
                )
            return consumption.RolloverDeclared(need(self.register_after, "register_after"), self.at)
        except BillingDomainError as err:
            raise BillingError(str(err), code="invalid_event", status_code=422) from err


class MeterEventOut(BaseModel):
    meter_id: str
    kind: str
    billed: Quantity
    register_value: Quantity


@router.post(
    "/meters/{meter_id}/events",
    status_code=201,
    response_model=MeterEventOut,
    summary="Declare a rollover, a meter replacement or a CT-ratio change",
)
async def meter_event(meter_id: Identifier, body: MeterEventIn, billing: BillingDep, actor: Acting) -> dict[str, Any]:
    return await billing.meter_events.meter_event(meter_id, body.event(), actor, body.reason)


class HeldOut(BaseModel):
    reading_id: uuid.UUID
    meter_id: str
    register_name: str
    value: Quantity
    sampled_at: datetime
    reason: str
    status: str
    held_at: datetime


@router.get("/held-readings", response_model=list[HeldOut], summary="Readings held for review (not billed)")
async def held(
    billing: BillingDep,
    status: Literal["open", "resolved"] | None = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await billing.meter_events.held_readings(status, limit)


@router.get(
    "/unknown-meters",
    response_model=UnknownMetersOut,
    summary="未知表计 · Meters with readings but nobody to bill (no binding, or only rooms never leased); not billed",
)
async def unknown_meters(billing: BillingDep) -> dict[str, Any]:
    unknown = billing.readings.unknown
    return {"since": unknown.since, "meters": [dataclasses.asdict(meter) for meter in unknown.listing()]}


# --- premises and people ---------------------------------------------------------------------


class EstateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shared_balance: bool = Field(default=True, description="水电一卡通: water and electricity share one balance")
    shared_basis: Literal["area", "equal"] = Field(default="area", description="how 公摊 is shared")


class BuildingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    estate_id: Identifier
    name: str = Field(min_length=1, max_length=200)


class FloorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    building_id: Identifier
    level: int = Field(ge=-5, le=200)


class RoomIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floor_id: Identifier
    code: Identifier = Field(description="the room code tenants write on a bank transfer, e.g. 1-0302")
    area_m2: Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2)]
    household_size: int = Field(default=1, ge=1, le=30)


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(default="", max_length=30)


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: Identifier
    room_id: Identifier
    move_in: date
    account_id: Identifier | None = Field(default=None, description="default: a new account named after the lease")


class MoveOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    move_out: date


class LeaseOut(BaseModel):
    lease_id: str
    tenant_id: str
    room_id: str
    account_id: str
    move_in: date
    move_out: date | None


class LeaseWithEstateOut(LeaseOut):
    estate_id: str


class RoomMeterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    utility: Utility
    effective_from: AwareDatetime | None = None


class ScopeOut(BaseModel):
    tenant_id: str
    accounts: list[str]
    rooms: list[str]
    meters: list[str]


@router.put("/estates/{estate_id}", status_code=204, summary="Create or update an estate")
async def put_estate(estate_id: Identifier, body: EstateIn, premises: PremisesDep) -> None:
    await premises.put_estate(estate_id, body.name, body.shared_balance, body.shared_basis)


@router.put("/buildings/{building_id}", status_code=204, summary="Create or update a building")
async def put_building(building_id: Identifier, body: BuildingIn, premises: PremisesDep) -> None:
    await premises.put_building(building_id, body.estate_id, body.name)


@router.put("/floors/{floor_id}", status_code=204, summary="Create or update a floor")
async def put_floor(floor_id: Identifier, body: FloorIn, premises: PremisesDep) -> None:
    await premises.put_floor(floor_id, body.building_id, body.level)


@router.put("/rooms/{room_id}", status_code=204, summary="Create or update a room")
async def put_room(room_id: Identifier, body: RoomIn, premises: PremisesDep) -> None:
    await premises.put_room(room_id, body.floor_id, body.code, body.area_m2, body.household_size)


@router.get("/rooms/{room_id}", response_model=contracts.RoomDetailOut, summary="A room with its leases and meters")
async def get_room(room_id: str, premises: PremisesDep) -> dict[str, Any]:
    return await premises.room(room_id)


@router.put(
    "/rooms/{room_id}/meters/{meter_id}", status_code=204, summary="Install a meter in a room (effective-dated)"
)
async def room_meter(room_id: Identifier, meter_id: Identifier, body: RoomMeterIn, premises: PremisesDep) -> None:
    await premises.bind_room_meter(room_id, meter_id, body.utility, body.effective_from)


@router.put(
    "/estates/{estate_id}/common-meters/{meter_id}",
    status_code=204,
    summary="A common meter whose consumption is shared (公摊) by the estate",
)
async def common_meter(estate_id: Identifier, meter_id: Identifier, body: RoomMeterIn, premises: PremisesDep) -> None:
    await premises.bind_common_meter(estate_id, meter_id, body.utility, body.effective_from)


@router.put("/tenants/{tenant_id}", status_code=204, summary="Create or update a tenant")
async def put_tenant(tenant_id: Identifier, body: TenantIn, premises: PremisesDep) -> None:
    await premises.put_tenant(tenant_id, body.name, body.phone)


@router.get(
    "/tenants/{tenant_id}/scope",
    response_model=ScopeOut,
    summary="Accounts, rooms and meters of the tenant's currently active leases",
)
async def tenant_scope(tenant_id: str, premises: PremisesDep) -> dict[str, Any]:
    return await premises.tenant_scope(tenant_id)


@router.put("/leases/{lease_id}", response_model=LeaseOut, summary="Move a household in (idempotent)")
async def put_lease(lease_id: Identifier, body: LeaseIn, premises: PremisesDep) -> dict[str, Any]:
    return await premises.start_lease(lease_id, body.tenant_id, body.room_id, body.move_in, body.account_id)


@router.get("/leases/{lease_id}", response_model=LeaseWithEstateOut, summary="A lease and the estate of its room")
async def get_lease(lease_id: str, premises: PremisesDep) -> dict[str, Any]:
    return await premises.lease(lease_id)


@router.post("/leases/{lease_id}/move-out", response_model=LeaseOut, summary="Move a household out")
async def move_out(lease_id: str, body: MoveOutIn, premises: PremisesDep) -> dict[str, Any]:
    return await premises.end_lease(lease_id, body.move_out)


@router.post(
    "/estates/{estate_id}/import",
    summary="Import an estate's rooms, meters and tenants from CSV (all or nothing)",
    description="Columns: " + ", ".join(CSV_COLUMNS) + ". Every refused line is reported with its number.",
)
async def import_estate(
    estate_id: str, premises: PremisesDep, body: Annotated[str, Body(media_type="text/csv")]
) -> dict[str, int]:
    return await premises.import_estate(estate_id, body)


@router.post(
    "/estates/{estate_id}/months/{month}/run",
    summary="Post a past month's fixed fees and 公摊 for an estate (once; a repeat returns the first run)",
)
async def run_month(estate_id: str, month: str, periods: PeriodsDep) -> dict[str, Any]:
    year, number = parse_month(month)
    return await periods.run_month(estate_id, year, number)


# --- staff listings and reports (their own modules) ----------------------------------------------

router.include_router(listings.router)
router.include_router(reports.router)
router.include_router(tariffs.router)  # tariff plans and price corrections
