"""Which plan prices a meter (pure): the documented resolution order, table by table; the fall-through to a
less specific plan when the more specific one has no version in force; no tiers for non-residential plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.tariff_config import (
    DEFAULT_PLAN,
    CustomerClass,
    FlatIn,
    PlanContext,
    PlanPricer,
    PlanScope,
    Pricer,
    StoredVersion,
    TierBlockIn,
    TieredIn,
    candidate_plans,
    check_plan_components,
    to_domain,
)
from shuidian_shared.messages import Utility

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RES, NON, COMMON = CustomerClass.RESIDENTIAL, CustomerClass.NON_RESIDENTIAL, CustomerClass.COMMON

PLANS = [
    PlanScope(DEFAULT_PLAN),
    PlanScope("class-non", customer_class=NON),
    PlanScope("estate-e", "E"),
    PlanScope("estate-e-non", "E", customer_class=NON),
    PlanScope("building-b1", "E", "B1"),
    PlanScope("building-b1-non", "E", "B1", NON),
    PlanScope("estate-f", "F"),
]


@pytest.mark.parametrize(
    ("estate", "building", "cls", "expected"),
    [
        # 1. estate + building + class
        ("E", "B1", NON, ["building-b1-non", "building-b1", "estate-e-non", "estate-e", "class-non", DEFAULT_PLAN]),
        # 2. estate + building (a residential room in B1)
        ("E", "B1", RES, ["building-b1", "estate-e", DEFAULT_PLAN]),
        # 3. estate + class, 4. estate (another building of E)
        ("E", "B2", NON, ["estate-e-non", "estate-e", "class-non", DEFAULT_PLAN]),
        ("E", "B2", RES, ["estate-e", DEFAULT_PLAN]),
        ("E", None, COMMON, ["estate-e", DEFAULT_PLAN]),
        # 5. class (an estate without a plan of its own), 6. the default
        ("G", "B9", NON, ["class-non", DEFAULT_PLAN]),
        ("G", "B9", RES, [DEFAULT_PLAN]),
        (None, None, RES, [DEFAULT_PLAN]),
        ("F", None, NON, ["estate-f", "class-non", DEFAULT_PLAN]),
    ],
)
def test_plans_are_tried_most_specific_first(
    estate: str | None, building: str | None, cls: CustomerClass, expected: list[str]
) -> None:
    found = candidate_plans(PLANS, PlanContext(estate, building, cls))
    assert [p.plan_id for p in found] == expected


def _version(tariff_id: int, start: datetime, price: str) -> StoredVersion:
    components = (FlatIn(unit_price=Decimal(price)),)
    return StoredVersion(tariff_id, components, to_domain(tariff_id, Utility.ELECTRICITY, start, components))


def test_a_plan_without_a_version_in_force_falls_through_to_the_next() -> None:
    pricers = {
        DEFAULT_PLAN: Pricer(Utility.ELECTRICITY, [_version(1, T0, "0.60")]),
        "estate-e": Pricer(Utility.ELECTRICITY, [_version(2, T0 + timedelta(days=30), "0.55")]),
        "estate-e-non": Pricer(Utility.ELECTRICITY, [_version(3, T0 + timedelta(days=60), "0.95")]),
    }
    plans = PlanPricer(Utility.ELECTRICITY, PLANS, pricers)
    shop = PlanContext("E", "B2", NON)

    def chosen(day: int) -> str | None:
        choice = plans.choose(shop, T0 + timedelta(days=day))
        return None if choice is None else choice.scope.plan_id

    assert [chosen(d) for d in (0, 29, 30, 59, 60, 400)] == [
        DEFAULT_PLAN,
        DEFAULT_PLAN,
        "estate-e",
        "estate-e",
        "estate-e-non",
        "estate-e-non",
    ]
    assert plans.choose(shop, T0 - timedelta(days=1)) is None  # nothing in force anywhere
    assert plans.choose(None, T0).scope.plan_id == DEFAULT_PLAN  # type: ignore[union-attr]
    # Resolution is remembered per context: the same list object answers again.
    assert plans.choices(shop) is plans.choices(PlanContext("E", "B2", NON))
    assert plans.versions == pricers[DEFAULT_PLAN].versions


def test_non_residential_plans_have_no_tiers() -> None:
    tiered = TieredIn(
        blocks=(
            TierBlockIn(label="一档", width=Decimal(100), unit_price=Decimal("0.5")),
            TierBlockIn(label="二档", width=None, unit_price=Decimal("0.8")),
        )
    )
    with pytest.raises(BillingDomainError, match="no tiers"):
        check_plan_components(PlanScope("p", "E", customer_class=NON), (tiered,))
    check_plan_components(PlanScope("p", "E", customer_class=RES), (tiered,))
    check_plan_components(PlanScope("p", "E", customer_class=NON), (FlatIn(unit_price=Decimal("0.9")),))


def test_a_building_plan_names_its_estate() -> None:
    with pytest.raises(BillingDomainError):
        PlanScope("p", None, "B1")


@pytest.mark.parametrize(
    ("scope", "fragment"),
    [
        (PlanScope(DEFAULT_PLAN), "default plan"),
        (PlanScope("p", "E", customer_class=NON), "estate E, class non_residential"),
        (PlanScope("p", "E", "B1"), "estate E, building B1"),
    ],
)
def test_every_plan_says_why_it_applies(scope: PlanScope, fragment: str) -> None:
    zh, en = scope.reason()
    assert fragment in en
    assert zh
