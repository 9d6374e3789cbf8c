"""Insights' side of the gateway contract: reading history, tenant reports, what-if, line loss, habits.

Tariff components use billing's JSON shape (docs/billing.md), so a version read from billing's
`/v1/tariffs/{utility}/versions` is a valid what-if input as it stands; the what-if prices whole local
hours, so its time-of-use segments must start on the hour.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shuidian_shared.messages import Identifier, Message
from shuidian_shared.money import Quantity


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FlatComponent(_In):
    kind: Literal["flat"] = "flat"
    name: str = Field(default="flat", min_length=1, max_length=40)
    unit_price: Quantity


class TouRate(_In):
    label: str = Field(min_length=1, max_length=20)
    unit_price: Quantity


class TouSegment(_In):
    start: time
    rate: str

    @field_validator("start")
    @classmethod
    def _on_the_hour(cls, value: time) -> time:
        if value.minute or value.second or value.microsecond:
            raise ValueError("time-of-use segments must start on the hour (the what-if prices whole hours)")
        return value


class TouComponent(_In):
    kind: Literal["tou"] = "tou"
    name: str = Field(default="tou", min_length=1, max_length=40)
    rates: tuple[TouRate, ...] = Field(min_length=1)
    segments: tuple[TouSegment, ...] = Field(min_length=1, max_length=24)

    @model_validator(mode="after")
    def _consistent(self) -> TouComponent:
        labels = [rate.label for rate in self.rates]
        if len(set(labels)) != len(labels):
            raise ValueError("time-of-use rate labels must be unique")
        if any(segment.rate not in labels for segment in self.segments):
            raise ValueError("every segment must name a defined rate")
        if len({segment.start for segment in self.segments}) != len(self.segments):
            raise ValueError("segment starts must differ")
        return self


class TierBlock(_In):
    label: str = Field(min_length=1, max_length=20)
    width: Quantity | None
    unit_price: Quantity
    extra_width_per_person: Quantity = Decimal(0)


class TieredComponent(_In):
    kind: Literal["tiered"] = "tiered"
    name: str = Field(default="tiered", min_length=1, max_length=40)
    period: Literal["month", "year"] = "month"
    base_household_size: int | None = Field(default=None, ge=1)
    blocks: tuple[TierBlock, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _open_last(self) -> TieredComponent:
        if self.blocks[-1].width is not None or any(b.width is None or b.width < 0 for b in self.blocks[:-1]):
            raise ValueError("every tier but the last needs a width ≥ 0; the last is open (width null)")
        return self


class FixedComponent(_In):
    kind: Literal["fixed"] = "fixed"
    name: str = Field(default="service_fee", min_length=1, max_length=40)
    amount_per_month: Quantity


class SharedComponent(_In):
    """公摊 marker: not priced per unit, ignored by the what-if."""

    kind: Literal["shared_area"] = "shared_area"
    name: str = Field(default="shared_area", min_length=1, max_length=40)


TariffComponent = Annotated[
    FlatComponent | TouComponent | TieredComponent | FixedComponent | SharedComponent, Field(discriminator="kind")
]


class TariffSpec(_In):
    """A tariff for one utility as the what-if prices it."""

    components: tuple[TariffComponent, ...] = Field(min_length=1, max_length=10)


# --- reading history (抄表记录) -------------------------------------------------------------------


class ReadingRow(BaseModel):
    meter_id: str
    register_name: str
    read_at: datetime
    value: Quantity
    reading_id: str


class FrozenRow(BaseModel):
    """A 日冻结 / 月冻结 value: the register at a local day or month start, traced to the sample it came from."""

    meter_id: str
    register_name: str
    kind: Literal["day", "month"]
    frozen_at: datetime
    value: Quantity
    read_at: datetime = Field(description="when the sample it came from was taken")
    reading_id: str


class ReadingHistoryOut(BaseModel):
    kind: Literal["raw", "day", "month"]
    start: datetime
    end: datetime
    meters: list[str]
    raw: list[ReadingRow]
    frozen: list[FrozenRow]


# --- tenant report -----------------------------------------------------------------------------


class AdviceItem(BaseModel):
    """One finding: what it is, its figures, the inputs they came from, and the money where computable."""

    code: str = Field(description="base_load, peak_share, tier_forecast, night_flow, seasonal_change, comparison")
    utility: str
    title_zh: str
    title_en: str
    text_zh: str
    text_en: str
    figures: dict[str, str] = Field(description="the numbers the text states, as decimal strings")
    inputs: dict[str, str] = Field(description="what the figures were computed from")
    saving_per_month: Quantity | None = Field(default=None, description="CNY, only where the tariff lets us compute it")


class TenantReportOut(BaseModel):
    account_id: str
    estate_id: str
    computed_at: datetime
    window_start: date
    window_end: date
    items: list[AdviceItem]


# --- what-if -----------------------------------------------------------------------------------


class WhatIfIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    utility: Literal["electricity", "water"]
    proposed: TariffSpec
    months: int = Field(default=12, ge=1, le=36, description="the last N whole local months")
    estate_id: Identifier | None = None


class WhatIfHousehold(BaseModel):
    account_id: str
    current: Quantity
    proposed: Quantity
    change: Quantity


class WhatIfOut(BaseModel):
    utility: str
    months: list[str]
    households: int
    current_revenue: Quantity = Field(description="CNY: every household's months re-priced under the tariff in force")
    proposed_revenue: Quantity
    revenue_change: Quantity
    revenue_change_pct: Quantity | None
    pay_more: int
    pay_less: int
    unchanged: int
    change_percentiles: dict[str, Quantity] = Field(description="p5, p25, p50, p75, p95 of per-household change, CNY")
    histogram: list[dict[str, str]] = Field(description="per-household change in CNY buckets: lower, upper, count")
    biggest_increases: list[WhatIfHousehold]
    seconds: float


# --- line loss (线损) ---------------------------------------------------------------------------


class LineLossGroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    master_meter_id: Identifier
    sub_meter_ids: tuple[Identifier, ...] = Field(min_length=1, max_length=5000)
    threshold_pct: Quantity = Field(default=Decimal("8"), ge=0, le=100)
    min_completeness_pct: Quantity = Field(default=Decimal("95"), ge=0, le=100)
    estate_id: Identifier | None = None


class LineLossDayOut(BaseModel):
    group_id: str
    day: date
    master_quantity: Quantity | None
    sub_quantity: Quantity
    loss_quantity: Quantity | None
    loss_pct: Quantity | None
    completeness_pct: Quantity
    judged: bool = Field(description="complete enough to judge: a loss is only stated when true")
    exceeded: bool


class LineLossExceeded(Message):
    """A line-loss group lost more than its threshold over a complete day (published by insights)."""

    group_id: Identifier
    master_meter_id: Identifier
    day: date
    loss_pct: Quantity
    threshold_pct: Quantity
    master_quantity: Quantity
    sub_quantity: Quantity
    completeness_pct: Quantity
    estate_id: Identifier | None = Field(
        default=None,
        description="the estate the group was configured in; None for a group configured without one "
        "(alarm then places it where its master meter is)",
    )


class MonthUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    utility: Literal["electricity", "water"]
    quantity: Quantity = Field(description="the month's use (kWh or m³)")
    previous_quantity: Quantity | None = Field(description="the month before's use; None when not known")
    change_pct: Quantity | None = Field(description="against the month before; None when not comparable")


class MonthlyReportReady(Message):
    """A household's monthly report is ready (published by insights on the 1st, Asia/Shanghai, once per household
    and month): the month's use in a line per utility, and where the tenant reads the full report with its
    saving advice. Keyed by account, like balance events, so the tenant's live stream can carry it."""

    account_id: Identifier
    tenant_id: Identifier | None
    estate_id: Identifier
    room_id: Identifier
    month: str = Field(pattern=r"^\d{4}-\d{2}$", description="the local month reported, YYYY-MM")
    usage: tuple[MonthUsage, ...]
    title_zh: str
    body_zh: str
    title_en: str
    body_en: str
    report_path: str = Field(description="the tenant's route at the gateway that serves the full report")


# --- habits ------------------------------------------------------------------------------------


class HabitCluster(BaseModel):
    cluster: int
    households: int
    shape: list[Quantity] = Field(description="share of the day's use per local hour 0..23, sums to 1")
    peak_share: Quantity | None = Field(description="at the dearest time-of-use rate (峰/尖); None without one")
    flat_share: Quantity | None = Field(description="at the rates between the dearest and the cheapest (平)")
    valley_share: Quantity | None = Field(description="at the cheapest rate (谷)")


class HabitsOut(BaseModel):
    utility: str
    estate_id: str | None
    month: str
    k: int
    silhouette: Quantity
    criterion: str
    clusters: list[HabitCluster]
    peak_share: Quantity | None = Field(description="the whole estate's (all households' shapes averaged)")
    flat_share: Quantity | None
    valley_share: Quantity | None


class TrendRow(BaseModel):
    period: str
    quantity: Quantity
    mom_pct: Quantity | None
    yoy_pct: Quantity | None
