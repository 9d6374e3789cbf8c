"""Billing's tariff plans and price correction runs (调价追溯), as billing answers them and the gateway forwards
them: one definition for the backend, the gateway and the gateway's tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from shuidian_shared.messages import Utility

CustomerClassName = Literal["residential", "non_residential", "common"]


class TariffPlanOut(BaseModel):
    """A plan: where it applies (None = anywhere) and how many versions it has per utility."""

    plan_id: str
    name: str
    estate_id: str | None = Field(description="the estate it applies to; null: every estate")
    building_id: str | None = Field(description="one building of the estate; null: every building")
    customer_class: CustomerClassName | None = Field(
        description="居民 residential / 非居民 non_residential / 公共 common; null: every class"
    )
    versions: dict[str, int] = Field(description="number of versions per utility")
    applies_zh: str = Field(description="为什么该方案适用")
    applies: str = Field(description="why a meter priced under this plan was")
    created_at: datetime


class TariffPlanList(BaseModel):
    items: list[TariffPlanOut]


class PlanVersionOut(BaseModel):
    tariff_id: int
    plan_id: str
    version: int = Field(description="1 for the plan's first version of the utility, then 2, 3 …")
    utility: Utility
    effective_from: datetime
    components: list[dict[str, Any]]


class PlanVersionAdded(BaseModel):
    tariff_id: int
    plan_id: str
    version: int
    effective_from: datetime = Field(description="when it takes effect: never before now once the plan has a version")


class CustomerClassOut(BaseModel):
    target: Literal["room", "lease", "meter"]
    id: str
    customer_class: CustomerClassName | None = Field(description="null: falls back to the lease's or room's class")


class HouseholdCorrectionOut(BaseModel):
    account_id: str
    quantity: Decimal = Field(description="kWh or m³ re-priced")
    old_amount: Decimal = Field(description="exact amount charged")
    new_amount: Decimal = Field(description="exact amount under the correcting version")
    difference: Decimal = Field(description="new − old, exact; positive: the household was charged too little")
    posted: Decimal = Field(description="the adjustment in whole fen, rounded toward zero (charged if positive)")
    txn_id: uuid.UUID | None = Field(
        description="the adjustment's ledger transaction; null in a preview or under a fen"
    )


class PriceCorrectionOut(BaseModel):
    """A correction run: previewed (committed false, nothing written) or committed (posted once)."""

    run_id: uuid.UUID
    plan_id: str
    utility: Utility
    period_start: datetime
    period_end: datetime
    components: list[dict[str, Any]]
    reason: str
    operator: str | None
    committed: bool
    created_at: datetime | None
    old_total: Decimal
    new_total: Decimal
    posted_total: Decimal
    households: list[HouseholdCorrectionOut]
    replayed: bool = False


class PriceCorrectionList(BaseModel):
    items: list[PriceCorrectionOut]


class PlanUsed(BaseModel):
    """Which plan priced a charge and why: an item of a charge explanation's `priced_under`."""

    tariff_id: int
    plan_id: str
    plan_name: str
    version: int = Field(description="the version's number within its plan and utility")
    explanation_zh: str = Field(description="例：按价格方案「…」第 3 版计价：该表属于…")
    explanation: str = Field(description='e.g. "priced under plan X version 3 because the meter is in …"')
