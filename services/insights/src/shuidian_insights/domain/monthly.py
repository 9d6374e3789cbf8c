"""The monthly report notice: the month's use per utility against the month before, in words (zh-CN, English)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from shuidian_insights.domain.usage import month_key, month_start

UNITS = {"electricity": ("度", "kWh"), "water": ("立方米", "m³")}
NAMES = {"electricity": ("用电", "Electricity"), "water": ("用水", "Water")}


@dataclass(frozen=True, slots=True)
class Usage:
    utility: str
    quantity: Decimal
    previous: Decimal | None

    @property
    def change_pct(self) -> Decimal | None:
        """Against the month before, to 0.1 %; None when the month before had no use to compare with."""
        if not self.previous:
            return None
        return ((self.quantity - self.previous) * 100 / self.previous).quantize(Decimal("0.1"))


def due_month(today: date, window_days: int) -> str | None:
    """The month whose reports go out on `today` (local): the month before, during the first `window_days`
    days of the month (a replica down on the 1st catches up; a first start mid-month sends nothing old)."""
    if today.day > window_days:
        return None
    return month_key(month_start(today) - timedelta(days=1))


def previous_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:])
    return f"{year - (mon == 1)}-{12 if mon == 1 else mon - 1:02d}"


def notice(month: str, usage: Sequence[Usage]) -> tuple[str, str, str, str]:
    """(title_zh, body_zh, title_en, body_en) of a household's monthly report notice."""
    year, mon = int(month[:4]), int(month[5:])
    zh, en = [], []
    for item in usage:
        unit_zh, unit_en = UNITS[item.utility]
        name_zh, name_en = NAMES[item.utility]
        quantity = item.quantity.quantize(Decimal("0.1"))
        change = item.change_pct
        if change is None:
            zh.append(f"{name_zh} {quantity} {unit_zh}")
            en.append(f"{name_en} {quantity} {unit_en}")
        elif change == 0:
            zh.append(f"{name_zh} {quantity} {unit_zh}，与上月持平")
            en.append(f"{name_en} {quantity} {unit_en}, the same as the month before")
        else:
            more_zh, more_en = ("多", "more") if change > 0 else ("少", "less")
            zh.append(f"{name_zh} {quantity} {unit_zh}，比上月{more_zh} {abs(change)}%")
            en.append(f"{name_en} {quantity} {unit_en}, {abs(change)}% {more_en} than the month before")
    month_en = date(year, mon, 1).strftime("%B %Y")
    return (
        f"{year}年{mon}月用能报告",
        f"{year}年{mon}月：" + "；".join(zh) + "。点击查看节能建议。",
        f"Your {month_en} usage report",
        f"{month_en}: " + "; ".join(en) + ". Open it for saving advice.",
    )
