"""Saving advice from a household's own hourly use, each figure with its inputs, money only where exact.

Caller contract: `hours` are the household's use of one utility per local hour over the window (local,
aware hour starts, in any order; a missing hour is unknown, not zero). Money is computed by pricing the
window's use per hour of day under the household's tariff (domain.pricing) before and after the change
the advice names, so a saving is always "price before − price after" of the same tariff; where the tariff
cannot tell (no time-of-use rates, no tiers), no saving is claimed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from shuidian_insights.domain.pricing import (
    HOURS,
    MonthProfile,
    first_tiered,
    first_tou,
    price_month,
    rate_by_hour,
    tier_split,
    tier_widths,
)
from shuidian_insights.domain.stats import median, pct_more, percentile
from shuidian_shared.contracts.insights import AdviceItem, TariffSpec

ZERO = Decimal(0)
NIGHT_HOURS = (1, 2, 3, 4)  # 01:00–05:00 local: nobody cooks, showers or irons
MIN_NIGHTS = 3
SHIFT_FRACTION = Decimal("0.2")
MIN_PEERS = 5
EFFICIENT_PERCENTILE = Decimal(20)
UNITS = {"electricity": "kWh", "water": "m³"}
Hour = tuple[datetime, Decimal]


@dataclass(frozen=True, slots=True)
class Window:
    """One utility's hourly use over a window, with the tariff that prices it."""

    utility: str
    hours: tuple[Hour, ...]
    tariff: TariffSpec | None
    household_size: int
    days: int

    @property
    def unit(self) -> str:
        return UNITS.get(self.utility, "")

    @property
    def total(self) -> Decimal:
        return sum((q for _, q in self.hours), ZERO)

    def by_hour(self) -> tuple[Decimal, ...]:
        totals = [ZERO] * HOURS
        for at, quantity in self.hours:
            totals[at.hour] += quantity
        return tuple(totals)

    def price(self, by_hour: Sequence[Decimal]) -> Decimal | None:
        if self.tariff is None:
            return None
        return price_month(self.tariff, MonthProfile("window", tuple(by_hour)), self.household_size)

    def per_month(self, amount: Decimal) -> Decimal:
        """An amount over the window scaled to 30 days, in fen."""
        return (amount * 30 / self.days).quantize(Decimal("0.01"))


def _q(value: Decimal, places: str = "0.001") -> str:
    return str(value.quantize(Decimal(places)))


def night_minima(hours: Sequence[Hour]) -> dict[date, Decimal]:
    """Per night with all night hours known: the smallest hourly use."""
    nights: dict[date, dict[int, Decimal]] = defaultdict(dict)
    for at, quantity in hours:
        if at.hour in NIGHT_HOURS:
            nights[at.date()][at.hour] = quantity
    return {night: min(values.values()) for night, values in nights.items() if len(values) == len(NIGHT_HOURS)}


def base_load(window: Window) -> AdviceItem | None:
    """Always-on use: the median over nights of the night's smallest hour."""
    minima = night_minima(window.hours)
    if len(minima) < MIN_NIGHTS or window.utility != "electricity":
        return None
    base = median(list(minima.values()))
    share = base * HOURS * window.days / window.total if window.total else ZERO
    figures = {"base_load_kw": _q(base), "share_pct": _q(share * 100, "1")}
    cost = window.price([base * window.days] * HOURS)
    if cost is not None:
        figures["cost_per_month"] = str(window.per_month(cost))
    cost_zh = f"，按您的电价每月约 ¥{figures['cost_per_month']}" if cost is not None else ""
    cost_en = f", about ¥{figures['cost_per_month']} a month at your tariff" if cost is not None else ""
    return AdviceItem(
        code="base_load",
        utility=window.utility,
        title_zh="待机基础负荷",
        title_en="Always-on base load",
        text_zh=f"夜间最低用电约 {figures['base_load_kw']} kW，占总用电 {figures['share_pct']}%{cost_zh}。检查冰箱、热水器和待机电器。",
        text_en=f"Your night-time minimum is about {figures['base_load_kw']} kW, {figures['share_pct']} % of your use{cost_en}. Check fridges, water heaters and standby devices.",
        figures=figures,
        inputs={
            "nights": str(len(minima)),
            "night_hours": "01:00-05:00",
            "rule": "median over nights of the smallest hourly use",
            "window_days": str(window.days),
        },
    )


def peak_share(window: Window) -> AdviceItem | None:
    """Share of use at the dearest time-of-use rate, and what moving a fifth of it to the cheapest saves."""
    tou = first_tou(window.tariff) if window.tariff else None
    total = window.total
    if tou is None or not total:
        return None
    prices = {rate.label: rate.unit_price for rate in tou.rates}
    peak_price, valley_price = max(prices.values()), min(prices.values())
    if peak_price == valley_price:
        return None

    labels = rate_by_hour(tou)
    by_hour = window.by_hour()
    peak_hours = [h for h in range(HOURS) if prices[labels[h]] == peak_price]
    valley_hours = [h for h in range(HOURS) if prices[labels[h]] == valley_price]
    peak = sum((by_hour[h] for h in peak_hours), ZERO)
    moved = peak * SHIFT_FRACTION
    shifted = list(by_hour)
    for h in peak_hours:
        shifted[h] -= by_hour[h] * SHIFT_FRACTION
    for h in valley_hours:
        shifted[h] += moved / len(valley_hours)
    before, after = window.price(by_hour), window.price(shifted)
    assert before is not None
    assert after is not None
    saving = window.per_month(before - after)
    peak_label = next(label for label, price in prices.items() if price == peak_price)
    valley_label = next(label for label, price in prices.items() if price == valley_price)
    figures = {
        "peak_share_pct": _q(peak * 100 / total, "1"),
        "peak_quantity": _q(peak),
        "shift_pct": _q(SHIFT_FRACTION * 100, "1"),
        "saving_per_month": str(saving),
    }
    return AdviceItem(
        code="peak_share",
        utility=window.utility,
        title_zh="峰时用电",
        title_en="Peak-hour use",
        text_zh=f"{figures['peak_share_pct']}% 的用量在{peak_label}时段。把其中 {figures['shift_pct']}% 移到{valley_label}时段，每月可省 ¥{saving}。",
        text_en=f"{figures['peak_share_pct']} % of your use falls in the {peak_label} rate. Moving {figures['shift_pct']} % of it to the {valley_label} rate saves ¥{saving} a month.",
        figures=figures,
        inputs={
            "peak_rate": f"{peak_label} ¥{peak_price}",
            "valley_rate": f"{valley_label} ¥{valley_price}",
            "window_days": str(window.days),
            "rule": "window priced per hour of day before and after the shift, scaled to 30 days",
        },
        saving_per_month=saving,
    )


def tier_forecast(window: Window, month_to_date: Decimal, today: date, days_in_month: int) -> AdviceItem | None:
    """At the month's pace so far, the day the household enters tier 2 and what the month's tier 2+ use adds."""
    tiered = first_tiered(window.tariff) if window.tariff else None
    elapsed = today.day - 1  # whole days before today
    if tiered is None or tiered.period != "month" or len(tiered.blocks) < 2 or elapsed < 1 or month_to_date <= 0:
        return None
    first_width = tier_widths(tiered, window.household_size)[0]
    assert first_width is not None
    daily = month_to_date / elapsed
    projected = daily * days_in_month
    if projected <= first_width:
        return None

    parts = tier_split(tiered, ZERO, projected, window.household_size)
    base_price = tiered.blocks[0].unit_price
    extra = sum((q * (b.unit_price - base_price) for q, b in zip(parts, tiered.blocks, strict=True)), ZERO)
    extra = extra.quantize(Decimal("0.01"))
    if month_to_date >= first_width:
        enters = today
    else:
        days_left = ((first_width - month_to_date) / daily).to_integral_value(rounding=ROUND_CEILING)
        enters = today.replace(day=1) + timedelta(days=elapsed + int(days_left) - 1)
    figures = {
        "tier_2_from": enters.isoformat(),
        "projected_month": _q(projected, "0.1"),
        "tier_1_width": str(first_width),
        "extra_cost": str(extra),
    }
    return AdviceItem(
        code="tier_forecast",
        utility=window.utility,
        title_zh="阶梯预测",
        title_en="Tier forecast",
        text_zh=f"按本月目前的用量，您将在 {enters.month} 月 {enters.day} 日进入第二档，本月多付约 ¥{extra}。",
        text_en=f"At this month's pace you enter tier 2 on {enters.isoformat()}, about ¥{extra} extra this month.",
        figures=figures,
        inputs={
            "month_to_date": _q(month_to_date),
            "days_counted": str(elapsed),
            "daily_average": _q(daily),
            "rule": "month's use so far ÷ whole days so far × days in month, priced by tier surcharge over tier 1",
        },
    )


def night_flow(window: Window) -> AdviceItem | None:
    """Water flowing in every night hour of the last nights: a running toilet or a leak, and what it costs."""
    minima = night_minima(window.hours)
    recent = sorted(minima)[-MIN_NIGHTS:]
    if window.utility != "water" or len(recent) < MIN_NIGHTS or any(minima[n] <= 0 for n in recent):
        return None
    flow = min(minima[n] for n in recent)
    by_hour = window.by_hour()
    leak_free = [max(ZERO, q - flow * window.days) for q in by_hour]
    before, after = window.price(by_hour), window.price(leak_free)
    saving = None if before is None or after is None else window.per_month(before - after)
    figures = {"flow_m3_per_hour": _q(flow), "nights": str(len(recent))}
    money_zh = f"，修好每月可省 ¥{saving}" if saving is not None else ""
    money_en = f"; fixing it saves ¥{saving} a month" if saving is not None else ""
    return AdviceItem(
        code="night_flow",
        utility=window.utility,
        title_zh="夜间持续用水",
        title_en="Water running at night",
        text_zh=f"最近 {len(recent)} 个夜晚凌晨每小时都有用水（至少 {figures['flow_m3_per_hour']} m³/h），可能有漏水{money_zh}。",
        text_en=f"Water ran in every night hour of the last {len(recent)} nights (at least {figures['flow_m3_per_hour']} m³/h): a leak or a running toilet{money_en}.",
        figures=figures,
        inputs={"night_hours": "01:00-05:00", "rule": "smallest night hour of each of the last nights > 0"},
        saving_per_month=saving,
    )


def seasonal_change(window: Window, previous_total: Decimal | None) -> AdviceItem | None:
    """This window's use against the window before it, with the money the difference makes."""
    if previous_total is None or previous_total <= 0:
        return None
    change = pct_more(window.total, previous_total)
    assert change is not None
    figures = {"change_pct": str(change), "this_window": _q(window.total), "previous_window": _q(previous_total)}
    direction_zh = "增加" if change >= 0 else "减少"
    return AdviceItem(
        code="seasonal_change",
        utility=window.utility,
        title_zh="季节变化",
        title_en="Seasonal change",
        text_zh=f"最近 {window.days} 天用量比之前 {window.days} 天{direction_zh} {abs(change)}%。",
        text_en=f"Your last {window.days} days used {change:+} % against the {window.days} days before.",
        figures=figures,
        inputs={"window_days": str(window.days), "rule": "total of this window ÷ total of the window before − 1"},
    )


def comparison(utility: str, own: Decimal, peers: Sequence[Decimal], month: str = "") -> AdviceItem | None:
    """Against similar homes over the same month: their median and their efficient fifth (20th percentile)."""
    if len(peers) < MIN_PEERS:
        return None
    ordered = sorted(peers)
    typical = percentile(ordered, Decimal(50))
    efficient = percentile(ordered, EFFICIENT_PERCENTILE)
    vs_typical, vs_efficient = pct_more(own, typical), pct_more(own, efficient)
    if vs_typical is None or vs_efficient is None:
        return None
    word_zh = "多" if vs_typical >= 0 else "少"
    return AdviceItem(
        code="comparison",
        utility=utility,
        title_zh="与相似家庭比较",
        title_en="Compared with similar homes",
        text_zh=f"您比相似家庭{word_zh}用 {abs(vs_typical)}%，比节能家庭{'多' if vs_efficient >= 0 else '少'}用 {abs(vs_efficient)}%。",
        text_en=f"You used {vs_typical:+} % against similar homes and {vs_efficient:+} % against efficient ones.",
        figures={
            "vs_similar_pct": str(vs_typical),
            "vs_efficient_pct": str(vs_efficient),
            "own": _q(own),
            "similar_median": _q(typical),
            "efficient_p20": _q(efficient),
        },
        inputs={
            "month": month,
            "peers": str(len(peers)),
            "similar": "same estate, area within ±20 %, household size within ±1",
            "efficient": "20th percentile of similar homes",
        },
    )


@dataclass(frozen=True, slots=True)
class Peer:
    account_id: str
    area_m2: Decimal
    household_size: int
    quantity: Decimal


def similar(area_m2: Decimal, household_size: int, candidates: Sequence[Peer], own_account: str) -> list[Decimal]:
    """Use of the candidates (same estate, chosen by the caller) that are like this household."""
    return [
        peer.quantity
        for peer in candidates
        if peer.account_id != own_account
        and abs(peer.area_m2 - area_m2) <= area_m2 * Decimal("0.2")
        and abs(peer.household_size - household_size) <= 1
    ]


def report(
    windows: Sequence[Window],
    *,
    previous_totals: dict[str, Decimal],
    peers: Mapping[str, tuple[Decimal, Sequence[Decimal]]],
    peer_month: str,
    month_to_date: dict[str, Decimal],
    today: date,
    days_in_month: int,
) -> list[AdviceItem]:
    """Every finding the data supports, comparison first."""
    items: list[AdviceItem | None] = []
    for window in windows:
        if window.utility in peers:
            own, similar_use = peers[window.utility]
            items.append(comparison(window.utility, own, similar_use, peer_month))
        items.append(base_load(window))
        items.append(peak_share(window))
        items.append(tier_forecast(window, month_to_date.get(window.utility, ZERO), today, days_in_month))
        items.append(night_flow(window))
        items.append(seasonal_change(window, previous_totals.get(window.utility)))
    return [item for item in items if item is not None]
