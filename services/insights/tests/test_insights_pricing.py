"""The what-if's pricing against billing's own pure pricing as the oracle: the current tariff re-priced
per hour of day gives billing's exact amount, and in whole fen what billing posted hour by hour."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_billing.domain import tariffs as billing_tariffs
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_billing.domain.tariff_config import COMPONENTS, to_domain
from shuidian_insights.domain.pricing import MonthProfile, price_month, price_months, rate_by_hour, to_fen
from shuidian_insights.domain.whatif import Household, HouseholdBill, PriceClasses, bill, what_if
from shuidian_shared.contracts.insights import TariffSpec
from shuidian_shared.messages import Utility
from shuidian_shared.money import split_cents

prices = st.decimals(min_value=Decimal("0.1"), max_value=Decimal("2"), places=4)
quantities = st.decimals(min_value=Decimal(0), max_value=Decimal("3"), places=3)


@st.composite
def tariff_components(draw: st.DrawFn) -> list[dict[str, Any]]:
    components: list[dict[str, Any]] = []
    if draw(st.booleans()):
        components.append({"kind": "flat", "unit_price": str(draw(prices))})
    if draw(st.booleans()) or not components:
        labels = ["峰", "平", "谷", "尖"][: draw(st.integers(2, 4))]
        starts = sorted(draw(st.sets(st.integers(0, 23), min_size=len(labels), max_size=6)))
        segments = [{"start": f"{h:02d}:00", "rate": labels[i % len(labels)]} for i, h in enumerate(starts)]
        rates = [{"label": label, "unit_price": str(draw(prices))} for label in labels]
        components.append({"kind": "tou", "rates": rates, "segments": segments})
    if draw(st.booleans()):
        widths = [draw(st.integers(5, 60)), draw(st.integers(5, 60))]
        components.append(
            {
                "kind": "tiered",
                "base_household_size": 3,
                "blocks": [
                    {
                        "label": "一档",
                        "width": str(widths[0]),
                        "unit_price": str(draw(prices)),
                        "extra_width_per_person": "5",
                    },
                    {"label": "二档", "width": str(widths[1]), "unit_price": str(draw(prices))},
                    {"label": "三档", "width": None, "unit_price": str(draw(prices))},
                ],
            }
        )
    return components


def billing_price(components: list[dict[str, Any]], hours: list[Decimal], household_size: int) -> list[Decimal]:
    """What billing's pure pricing charges hour by hour (exact), from 2026-03-01 00:00 local."""
    version = to_domain(
        1, Utility.ELECTRICITY, datetime(2020, 1, 1, tzinfo=UTC), COMPONENTS.validate_python(components)
    )
    start = datetime(2026, 3, 1, tzinfo=CHINA_STANDARD_TIME)
    used = Decimal(0)
    amounts = []
    for index, quantity in enumerate(hours):
        begin = start + timedelta(hours=index)
        priced = billing_tariffs.price_interval(
            [version], Utility.ELECTRICITY, quantity, begin, begin + timedelta(hours=1), used, household_size
        )
        used = priced.usage_in_period_after
        amounts.append(sum((line.amount for line in priced.lines), Decimal(0)))
    return amounts


def month_profile(hours: list[Decimal]) -> MonthProfile:
    by_hour = [Decimal(0)] * 24
    for index, quantity in enumerate(hours):
        by_hour[index % 24] += quantity
    return MonthProfile("2026-03", tuple(by_hour))


@settings(max_examples=60, deadline=None)
@given(components=tariff_components(), hours=st.lists(quantities, min_size=24, max_size=24 * 4), size=st.integers(1, 6))
def test_current_tariff_reproduces_billing_to_the_fen(
    components: list[dict[str, Any]], hours: list[Decimal], size: int
) -> None:
    spec = TariffSpec.model_validate({"components": components})
    charged = billing_price(components, hours, size)
    exact = price_month(spec, month_profile(hours), size)
    assert exact == sum(charged, Decimal(0))
    # Billing posts each hour in whole fen toward zero and carries the rest: the posted sum is the bill.
    posted, carry = Decimal(0), Decimal(0)
    for amount in charged:
        cents, carry = split_cents(amount + carry)
        posted += cents
    household = Household("A1", size, (month_profile(hours),))
    assert bill(spec, household) == posted == to_fen(exact)


@given(components=tariff_components(), hours=st.lists(quantities, min_size=24, max_size=48), size=st.integers(1, 6))
def test_the_same_tariff_changes_no_bill(components: list[dict[str, Any]], hours: list[Decimal], size: int) -> None:
    spec = TariffSpec.model_validate({"components": components})
    result = what_if(spec, spec, [Household("A", size, (month_profile(hours),))])
    assert result.revenue_change == 0
    assert result.count(0) == 1


def test_a_dearer_flat_price_raises_every_bill_by_its_use() -> None:
    cheap = TariffSpec.model_validate({"components": [{"kind": "flat", "unit_price": "0.5"}]})
    dear = TariffSpec.model_validate({"components": [{"kind": "flat", "unit_price": "0.6"}]})
    households = [
        Household("A", 1, (MonthProfile("2026-01", (Decimal(10),) + (Decimal(0),) * 23),)),
        Household("B", 1, (MonthProfile("2026-01", (Decimal(0),) * 24),)),
    ]
    result = what_if(cheap, dear, households)
    assert [b.change for b in result.bills] == [Decimal("1.00"), Decimal("0.00")]
    assert (result.count(1), result.count(0), result.count(-1)) == (1, 1, 0)
    assert result.revenue_change_pct == Decimal("20.00")


def test_a_yearly_tier_counts_from_january() -> None:
    spec = TariffSpec.model_validate(
        {
            "components": [
                {
                    "kind": "tiered",
                    "period": "year",
                    "blocks": [
                        {"label": "一档", "width": "100", "unit_price": "1"},
                        {"label": "二档", "width": None, "unit_price": "2"},
                    ],
                }
            ]
        }
    )
    month = (Decimal(60),) + (Decimal(0),) * 23
    profiles = [MonthProfile("2025-12", month), MonthProfile("2026-01", month), MonthProfile("2026-02", month)]
    # December alone in 2025 (60 at 1); January 60 at 1; February 40 at 1 and 20 at 2.
    assert price_months(spec, profiles, 1) == Decimal(60 + 60 + 40 + 40)


def test_time_of_use_segments_wrap_past_midnight() -> None:
    spec = TariffSpec.model_validate(
        {
            "components": [
                {
                    "kind": "tou",
                    "rates": [{"label": "峰", "unit_price": "1"}, {"label": "谷", "unit_price": "0.3"}],
                    "segments": [{"start": time(8), "rate": "峰"}, {"start": time(22), "rate": "谷"}],
                }
            ]
        }
    )
    tou = spec.components[0]
    assert tou.kind == "tou"
    labels = rate_by_hour(tou)
    assert labels[:8] == ("谷",) * 8
    assert labels[8:22] == ("峰",) * 14
    assert labels[22:] == ("谷",) * 2


@settings(max_examples=80, deadline=None)
@given(
    current=tariff_components(),
    proposed=tariff_components(),
    months=st.lists(st.lists(quantities, min_size=24, max_size=24), min_size=1, max_size=14),
    size=st.integers(1, 6),
)
def test_pricing_per_price_class_gives_the_bills_of_pricing_per_hour(
    current: list[dict[str, Any]], proposed: list[dict[str, Any]], months: list[list[Decimal]], size: int
) -> None:
    """The what-if reads each month's use summed per class of hours the two tariffs price alike: every bill
    equals the bill of the 24 hours, exactly, across years (a yearly tier restarts in January)."""
    before, after = (
        TariffSpec.model_validate({"components": current}),
        TariffSpec.model_validate({"components": proposed}),
    )
    labels = [f"{2025 + i // 12}-{i % 12 + 1:02d}" for i in range(len(months))]
    household = Household("A", size, tuple(MonthProfile(m, tuple(h)) for m, h in zip(labels, months, strict=True)))
    classes = PriceClasses.of(before, after)
    assert sorted(h for hours in classes.hours for h in hours) == list(range(24))
    assert len(classes.before.hourly) == len(classes.hours) <= 24
    reduced = Household("A", size, tuple(classes.reduce(m) for m in household.months))
    assert classes.bill(reduced) == HouseholdBill("A", bill(before, household), bill(after, household))


def test_flat_against_two_rates_is_two_classes() -> None:
    flat = TariffSpec.model_validate({"components": [{"kind": "flat", "unit_price": "0.56"}]})
    tou = TariffSpec.model_validate(
        {
            "components": [
                {
                    "kind": "tou",
                    "rates": [{"label": "峰", "unit_price": "0.68"}, {"label": "谷", "unit_price": "0.32"}],
                    "segments": [{"start": "08:00", "rate": "峰"}, {"start": "22:00", "rate": "谷"}],
                }
            ]
        }
    )
    classes = PriceClasses.of(flat, tou)
    assert classes.hours == ((0, 1, 2, 3, 4, 5, 6, 7, 22, 23), tuple(range(8, 22)))
    assert classes.after.hourly == (Decimal("0.32"), Decimal("0.68"))
    assert classes.before.hourly == (Decimal("0.56"), Decimal("0.56"))
