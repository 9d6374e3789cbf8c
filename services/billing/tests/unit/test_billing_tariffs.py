"""Tariff pricing: versions, tiers, time-of-use, pro-rata splits, fixed fees and 公摊."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.periods import (
    CHINA_STANDARD_TIME as CST,
)
from shuidian_billing.domain.periods import (
    CalendarPeriod,
    apportion,
    month_starts_between,
    period_end,
    period_start,
)
from shuidian_billing.domain.tariffs import (
    Component,
    FixedCharge,
    FlatPrice,
    NoTariffInEffect,
    PricedConsumption,
    SharedBasis,
    TariffVersion,
    TierBlock,
    Tiered,
    TimeOfUse,
    TouRate,
    TouSegment,
    allocate_shared_cost,
    fixed_charge_lines,
    price_interval,
    version_at,
)
from shuidian_shared.messages import Utility

D = Decimal
E = Utility.ELECTRICITY
W = Utility.WATER


def local(y: int, m: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=CST)


def version(when: datetime, *components: Component, utility: Utility = E) -> TariffVersion:
    return TariffVersion("t1", utility, when, components)


FLAT_05 = version(local(2024, 1, 1), FlatPrice(D("0.5")))
FLAT_06_MAR15 = version(local(2024, 3, 15), FlatPrice(D("0.6")))

MONTHLY_TIERS = Tiered(
    CalendarPeriod.MONTH,
    (
        TierBlock("tier1", D(200), D("0.5")),
        TierBlock("tier2", D(200), D("0.55")),
        TierBlock("tier3", None, D("0.8")),
    ),
)
YEARLY_WATER = Tiered(
    CalendarPeriod.YEAR,
    (
        TierBlock("tier1", D(180), D("3.45"), extra_width_per_person=D(45)),
        TierBlock("tier2", D(80), D("4.83")),
        TierBlock("tier3", None, D("5.83")),
    ),
    base_household_size=4,
)
PEAK_VALLEY = TimeOfUse(
    (TouRate("peak", D("1.0")), TouRate("valley", D("0.3"))),
    (TouSegment(time(8), "peak"), TouSegment(time(22), "valley")),
)


def summary(priced: PricedConsumption) -> list[tuple[str, str, Decimal, Decimal]]:
    return [(line.component, line.label, line.quantity, line.amount) for line in priced.lines]


def price(
    versions: list[TariffVersion],
    q: str,
    start: datetime,
    end: datetime,
    used: str = "0",
    size: int = 1,
    utility: Utility = E,
) -> PricedConsumption:
    return price_interval(versions, utility, D(q), start, end, D(used), size, CST)


@pytest.mark.parametrize(
    ("versions", "q", "start", "end", "used", "expected", "total"),
    [
        pytest.param(
            [FLAT_05],
            "10",
            local(2024, 3, 1, 10),
            local(2024, 3, 1, 11),
            "0",
            [("flat", "flat", D(10), D("5.0"))],
            "5.0",
            id="flat",
        ),
        pytest.param(
            [FLAT_05, FLAT_06_MAR15],
            "10",
            local(2024, 3, 14, 23),
            local(2024, 3, 15, 1),
            "0",
            [("flat", "flat", D(5), D("2.5")), ("flat", "flat", D(5), D("3.0"))],
            "5.5",
            id="tariff-change-mid-month",
        ),
        pytest.param(
            [FLAT_05, FLAT_06_MAR15],
            "100",
            local(2024, 3, 10),
            local(2024, 3, 20),
            "0",
            [("flat", "flat", D(50), D("25.0")), ("flat", "flat", D(50), D("30.0"))],
            "55.0",
            id="reading-gap-spanning-tariff-change",
        ),
        pytest.param(
            [FLAT_05, FLAT_06_MAR15],
            "10",
            local(2024, 3, 1),
            local(2024, 3, 2),
            "0",
            [("flat", "flat", D(10), D("5.0"))],
            "5.0",
            id="later-version-does-not-reprice-the-past",
        ),
        pytest.param(
            [version(local(2024, 1, 1), MONTHLY_TIERS)],
            "20",
            local(2024, 3, 5),
            local(2024, 3, 6),
            "190",
            [("tiered", "tier1", D(10), D("5.0")), ("tiered", "tier2", D(10), D("5.50"))],
            "10.50",
            id="tier-boundary-inside-interval",
        ),
        pytest.param(
            [version(local(2024, 1, 1), MONTHLY_TIERS)],
            "20",
            local(2024, 3, 31, 23),
            local(2024, 4, 1, 1),
            "195",
            [
                ("tiered", "tier1", D(5), D("2.5")),
                ("tiered", "tier2", D(5), D("2.75")),
                ("tiered", "tier1", D(10), D("5.0")),
            ],
            "10.25",
            id="month-boundary-resets-tiers",
        ),
        pytest.param(
            [version(local(2024, 1, 1), MONTHLY_TIERS)],
            "30",
            local(2024, 3, 5),
            local(2024, 3, 6),
            "500",
            [("tiered", "tier3", D(30), D("24.0"))],
            "24.0",
            id="open-last-tier",
        ),
        pytest.param(
            [version(local(2024, 1, 1), PEAK_VALLEY)],
            "4",
            local(2024, 3, 5, 21),
            local(2024, 3, 5, 23),
            "0",
            [("tou", "peak", D(2), D("2.0")), ("tou", "valley", D(2), D("0.6"))],
            "2.6",
            id="tou-evening",
        ),
        pytest.param(
            [version(local(2024, 1, 1), PEAK_VALLEY)],
            "4",
            local(2024, 3, 5, 23),
            local(2024, 3, 6, 1),
            "0",
            [("tou", "valley", D(4), D("1.2"))],
            "1.2",
            id="tou-segment-crossing-midnight",
        ),
        pytest.param(
            [version(local(2024, 1, 1), PEAK_VALLEY)],
            "4",
            local(2024, 3, 6, 7),
            local(2024, 3, 6, 9),
            "0",
            [("tou", "peak", D(2), D("2.0")), ("tou", "valley", D(2), D("0.6"))],
            "2.6",
            id="tou-small-hours-belong-to-last-nights-segment",
        ),
        pytest.param(
            [version(local(2024, 1, 1), PEAK_VALLEY)],
            "24",
            local(2024, 3, 5, 10),
            local(2024, 3, 6, 10),
            "0",
            [("tou", "peak", D(14), D("14.0")), ("tou", "valley", D(10), D("3.0"))],
            "17.0",
            id="tou-whole-day",
        ),
        pytest.param(
            [FLAT_05],
            "3",
            local(2024, 3, 1, 10),
            local(2024, 3, 1, 10),
            "0",
            [("flat", "flat", D(3), D("1.5"))],
            "1.5",
            id="empty-interval-priced-at-its-instant",
        ),
        pytest.param(
            [FLAT_05],
            "0",
            local(2024, 3, 1, 10),
            local(2024, 3, 1, 11),
            "0",
            [],
            "0",
            id="nothing-used",
        ),
    ],
)
def test_price_interval(
    versions: list[TariffVersion],
    q: str,
    start: datetime,
    end: datetime,
    used: str,
    expected: list[tuple[str, str, Decimal, Decimal]],
    total: str,
) -> None:
    priced = price(versions, q, start, end, used)
    assert summary(priced) == expected
    assert priced.total == D(total)


@pytest.mark.parametrize(
    ("start", "end", "used", "expected", "usage_after"),
    [
        pytest.param(
            local(2024, 12, 31, 12),
            local(2025, 1, 1, 12),
            "178",
            [("tier1", D(2)), ("tier2", D(3)), ("tier1", D(5))],
            D(5),
            id="year-boundary-resets",
        ),
        pytest.param(
            local(2024, 6, 30, 12),
            local(2024, 7, 1, 12),
            "178",
            [("tier1", D(2)), ("tier2", D(3)), ("tier2", D(5))],
            D(188),
            id="month-boundary-inside-a-yearly-period-does-not",
        ),
    ],
)
def test_yearly_water_tiers(
    start: datetime, end: datetime, used: str, expected: list[tuple[str, Decimal]], usage_after: Decimal
) -> None:
    priced = price([version(local(2024, 1, 1), YEARLY_WATER, utility=W)], "10", start, end, used, 4, W)
    assert [(line.label, line.quantity) for line in priced.lines] == expected
    assert priced.usage_in_period_after == usage_after


@pytest.mark.parametrize(
    ("size", "tier1_width"),
    [(1, 180), (4, 180), (5, 225), (6, 270), (8, 360)],
)
def test_tier_widths_scale_with_household_size(size: int, tier1_width: int) -> None:
    assert YEARLY_WATER.widths(size)[0] == D(tier1_width)
    assert YEARLY_WATER.widths(size)[1] == D(80)
    priced = price(
        [version(local(2024, 1, 1), YEARLY_WATER, utility=W)],
        "20", local(2024, 5, 1), local(2024, 5, 2), str(tier1_width - 10), size, W,
    )  # fmt: skip
    assert [(line.label, line.quantity) for line in priced.lines] == [("tier1", D(10)), ("tier2", D(10))]


def test_tiers_are_separate_per_utility() -> None:
    versions = [version(local(2024, 1, 1), MONTHLY_TIERS), version(local(2024, 1, 1), YEARLY_WATER, utility=W)]
    water = price(versions, "5", local(2024, 5, 1), local(2024, 5, 2), "0", 4, W)
    power = price(versions, "5", local(2024, 5, 1), local(2024, 5, 2), "0", 4, E)
    assert water.lines[0].unit_price == D("3.45")
    assert power.lines[0].unit_price == D("0.5")


def test_components_are_additive_tou_plus_tier_markup() -> None:
    markup = Tiered(
        CalendarPeriod.MONTH,
        (TierBlock("tier1", D(200), D(0)), TierBlock("tier2", None, D("0.05"))),
        name="tier_markup",
    )
    priced = price(
        [version(local(2024, 1, 1), PEAK_VALLEY, markup)], "4", local(2024, 3, 5, 21), local(2024, 3, 5, 23), "198"
    )
    assert summary(priced) == [
        ("tou", "peak", D(2), D("2.0")),
        ("tou", "valley", D(2), D("0.6")),
        ("tier_markup", "tier1", D(2), D(0)),
        ("tier_markup", "tier2", D(2), D("0.10")),
    ]


def test_tariff_registers_price_each_rate_delta() -> None:
    versions = [version(local(2024, 1, 1), PEAK_VALLEY)]
    priced = price_interval(
        versions, E, D("3.5"), local(2024, 3, 5, 21), local(2024, 3, 5, 23), D(0), 1, CST,
        segment_quantities={"peak": D("3.0"), "valley": D("0.5")},
    )  # fmt: skip
    assert summary(priced) == [("tou", "peak", D("3.0"), D("3.00")), ("tou", "valley", D("0.5"), D("0.15"))]


def test_tariff_registers_across_a_version_change_split_by_rate_time() -> None:
    cheaper = TimeOfUse(
        (TouRate("peak", D("0.9")), TouRate("valley", D("0.2"))),
        (TouSegment(time(8), "peak"), TouSegment(time(22), "valley")),
    )
    versions = [version(local(2024, 1, 1), PEAK_VALLEY), version(local(2024, 3, 6), cheaper)]
    priced = price_interval(
        versions, E, D(6), local(2024, 3, 5, 21), local(2024, 3, 6, 1), D(0), 1, CST,
        segment_quantities={"peak": D(2), "valley": D(4)},
    )  # fmt: skip
    # Peak ran only before midnight (old version); valley ran 2 h before and 1 h after.
    assert summary(priced) == [
        ("tou", "peak", D(2), D("2.0")),
        ("tou", "valley", D("2.666667"), D("0.8000001")),
        ("tou", "valley", D("1.333333"), D("0.2666666")),
    ]


def test_tariff_registers_must_sum_to_the_quantity() -> None:
    with pytest.raises(BillingDomainError):
        price_interval(
            [version(local(2024, 1, 1), PEAK_VALLEY)], E, D(4), local(2024, 3, 5), local(2024, 3, 6), D(0), 1, CST,
            segment_quantities={"peak": D(3)},
        )  # fmt: skip


@pytest.mark.parametrize(
    ("versions", "start"),
    [
        ([FLAT_05], local(2023, 12, 31, 23)),
        ([version(local(2024, 1, 1), FlatPrice(D(1)), utility=W)], local(2024, 3, 1)),
    ],
)
def test_no_tariff_in_effect(versions: list[TariffVersion], start: datetime) -> None:
    with pytest.raises(NoTariffInEffect):
        price(versions, "1", start, start + timedelta(hours=2))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((D(-1), local(2024, 3, 1), local(2024, 3, 2), D(0), 1), "negative"),
        ((D(1), local(2024, 3, 2), local(2024, 3, 1), D(0), 1), "before it starts"),
        ((D(1), local(2024, 3, 1), local(2024, 3, 2), D(0), 0), "household"),
        ((D(1), datetime(2024, 3, 1), local(2024, 3, 2), D(0), 1), "aware"),  # noqa: DTZ001
    ],
)
def test_price_interval_refuses_bad_input(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(BillingDomainError, match=match):
        price_interval([FLAT_05], E, *args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: TimeOfUse((TouRate("a", D(1)),), ()),
        lambda: TimeOfUse((TouRate("a", D(1)),), tuple(TouSegment(time(h), "a") for h in range(15))),
        lambda: TimeOfUse((TouRate("a", D(1)),), (TouSegment(time(9), "a"), TouSegment(time(8), "a"))),
        lambda: TimeOfUse((TouRate("a", D(1)),), (TouSegment(time(9), "b"),)),
        lambda: Tiered(CalendarPeriod.MONTH, (TierBlock("t1", D(10), D(1)),)),
        lambda: Tiered(CalendarPeriod.MONTH, (TierBlock("t1", None, D(1), D(5)),)),
        lambda: FixedCharge(D("1.005")),
        lambda: TariffVersion("t", E, local(2024, 1, 1), (FlatPrice(D(1)), FlatPrice(D(2)))),
    ],
)
def test_invalid_tariff_definitions_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(BillingDomainError):
        build()


def test_fourteen_segments_across_midnight() -> None:
    labels = ("sharp", "peak", "flat", "valley")
    rates = tuple(TouRate(label, D(index + 1)) for index, label in enumerate(labels))
    odd_hours = tuple(TouSegment(time(h, 30), labels[h % 4]) for h in range(1, 24, 2))
    segments = (TouSegment(time(0, 15), "sharp"), *odd_hours, TouSegment(time(23, 45), "valley"))
    tou = TimeOfUse(rates, segments)
    assert len(tou.segments) == 14
    priced = price([version(local(2024, 1, 1), tou)], "24", local(2024, 3, 5), local(2024, 3, 6))
    assert sum(line.quantity for line in priced.lines) == D(24)
    assert tou.rate_at(local(2024, 3, 5, 0, 5), CST) == "valley"  # still last night's 23:45 segment


def test_time_of_use_follows_the_given_zone() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    versions = [version(datetime(2024, 1, 1, tzinfo=shanghai), PEAK_VALLEY)]
    start = datetime(2024, 3, 5, 13, tzinfo=UTC)  # 21:00 in Shanghai
    priced = price_interval(versions, E, D(4), start, start + timedelta(hours=2), D(0), 1, shanghai)
    assert summary(priced) == [("tou", "peak", D(2), D("2.0")), ("tou", "valley", D(2), D("0.6"))]


def test_fixed_charges_per_month() -> None:
    versions = [
        version(local(2024, 1, 1), FlatPrice(D(1)), FixedCharge(D("5.00"))),
        version(local(2024, 3, 15), FlatPrice(D(1)), FixedCharge(D("6.00"))),
    ]
    assert fixed_charge_lines(versions, E, 2023, 12, CST) == ()
    march = fixed_charge_lines(versions, E, 2024, 3, CST)
    april = fixed_charge_lines(versions, E, 2024, 4, CST)
    assert [(line.label, line.amount) for line in march] == [("2024-03", D("5.00"))]
    assert [(line.label, line.amount) for line in april] == [("2024-04", D("6.00"))]
    assert (march[0].start, march[0].end) == (local(2024, 3, 1), local(2024, 4, 1))


def test_version_at() -> None:
    versions = [FLAT_05, FLAT_06_MAR15]
    assert version_at(versions, E, local(2024, 3, 14, 23, 59)) is FLAT_05
    assert version_at(versions, E, local(2024, 3, 15)) is FLAT_06_MAR15


# --- 公摊 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "households", "basis", "expected"),
    [
        ("100.00", {"a": D(1), "b": D(1), "c": D(1)}, SharedBasis.EQUAL, {"a": "33.34", "b": "33.33", "c": "33.33"}),
        ("0.02", {"c": D(0), "b": D(0), "a": D(0)}, SharedBasis.EQUAL, {"a": "0.01", "b": "0.01", "c": "0.00"}),
        ("10.00", {"a": D(60), "b": D(40)}, SharedBasis.AREA, {"a": "6.00", "b": "4.00"}),
        (
            "10.00",
            {"a": D("45.5"), "b": D("54.5"), "c": D(0)},
            SharedBasis.AREA,
            {"a": "4.55", "b": "5.45", "c": "0.00"},
        ),
        ("1.00", {"a": D(70), "b": D(70), "c": D(70)}, SharedBasis.AREA, {"a": "0.34", "b": "0.33", "c": "0.33"}),
        ("-1.00", {"a": D(1), "b": D(2)}, SharedBasis.AREA, {"a": "-0.33", "b": "-0.67"}),
        ("0.00", {"a": D(1), "b": D(2)}, SharedBasis.AREA, {"a": "0.00", "b": "0.00"}),
    ],
)
def test_allocate_shared_cost(
    total: str, households: dict[str, Decimal], basis: SharedBasis, expected: dict[str, str]
) -> None:
    parts = allocate_shared_cost(D(total), households, basis)
    assert parts == {key: D(value) for key, value in expected.items()}


@pytest.mark.parametrize(
    ("total", "households", "basis"),
    [
        ("1.001", {"a": D(1)}, SharedBasis.EQUAL),
        ("1.00", {}, SharedBasis.EQUAL),
        ("1.00", {"a": D(0)}, SharedBasis.AREA),
        ("1.00", {"a": D(-1), "b": D(3)}, SharedBasis.AREA),
    ],
)
def test_allocate_shared_cost_refuses(total: str, households: dict[str, Decimal], basis: SharedBasis) -> None:
    with pytest.raises(BillingDomainError):
        allocate_shared_cost(D(total), households, basis)


@given(
    st.integers(-(10**8), 10**8),
    st.dictionaries(st.text("abcdef", min_size=1, max_size=4), st.decimals("0", "500", places=2), min_size=1),
    st.sampled_from(SharedBasis),
)
def test_shared_parts_sum_exactly_and_stay_within_a_fen(
    cents: int, areas: dict[str, Decimal], basis: SharedBasis
) -> None:
    if basis is SharedBasis.AREA and not any(areas.values()):
        areas = {**areas, "z": D(1)}
    total = D(cents) / 100
    parts = allocate_shared_cost(total, areas, basis)
    assert sum(parts.values()) == total
    assert set(parts) == set(areas)
    weights = areas if basis is SharedBasis.AREA else dict.fromkeys(areas, D(1))
    whole = sum(weights.values())
    for key, part in parts.items():
        assert part == part.quantize(D("0.01"))
        assert abs(part - total * weights[key] / whole) < D("0.01")


# --- pro-rata properties -----------------------------------------------------------------


@given(
    st.decimals("-1000000", "1000000", places=4),
    st.lists(st.integers(0, 10**12), min_size=1, max_size=20).filter(any),
)
def test_apportion_sums_exactly(total: Decimal, weights: list[int]) -> None:
    parts = apportion(total, weights)
    assert sum(parts) == total
    assert len(parts) == len(weights)
    for part, weight in zip(parts, weights, strict=True):
        if weight == 0:
            assert part == 0
        else:
            assert (part >= 0) == (total >= 0) or part == 0


TIMES = st.datetimes(datetime(2023, 11, 1), datetime(2025, 2, 1), timezones=st.just(UTC))  # noqa: DTZ001


@st.composite
def tariff_history(draw: st.DrawFn) -> list[TariffVersion]:
    """Versions with the same component names (prices vary), changing at random instants."""
    starts = sorted(set(draw(st.lists(TIMES, min_size=1, max_size=5))))
    prices = st.decimals("0.0001", "9.9999", places=4)
    versions = [
        version(
            when,
            FlatPrice(draw(prices), name="base"),
            TimeOfUse(
                (TouRate("peak", draw(prices)), TouRate("valley", draw(prices))),
                (
                    TouSegment(time(draw(st.integers(0, 11))), "peak"),
                    TouSegment(time(draw(st.integers(12, 23))), "valley"),
                ),
            ),
            Tiered(
                draw(st.sampled_from(CalendarPeriod)),
                (TierBlock("t1", D(draw(st.integers(1, 300))), draw(prices)), TierBlock("t2", None, draw(prices))),
            ),
        )
        for when in starts
    ]
    return [version(datetime(2020, 1, 1, tzinfo=UTC), FlatPrice(D(1), name="base")), *versions]


@settings(max_examples=200, deadline=None)
@given(
    tariff_history(),
    TIMES,
    st.integers(0, 60 * 24 * 70),
    st.decimals("0", "99999", places=3),
    st.decimals("0", "500", places=2),
)
def test_every_component_prices_the_whole_quantity_exactly(
    versions: list[TariffVersion], start: datetime, minutes: int, quantity: Decimal, used: Decimal
) -> None:
    priced = price_interval(versions, E, quantity, start, start + timedelta(minutes=minutes), used, 3, CST)
    by_component: dict[str, Decimal] = {}
    for line in priced.lines:
        by_component[line.component] = by_component.get(line.component, D(0)) + line.quantity
        assert line.amount == line.quantity * line.unit_price
        assert line.quantity > 0
        assert priced.start <= line.start <= line.end <= priced.end
    # "base" exists in every version; TOU and tier components price all of each piece they cover.
    assert by_component.get("base", D(0)) == quantity
    if versions[1].effective_from <= start:  # every piece is priced by a TOU + tiered version
        assert by_component.get("tou", D(0)) == by_component.get("tiered", D(0)) == quantity
    assert priced.total == sum(line.amount for line in priced.lines)


@settings(max_examples=100, deadline=None)
@given(tariff_history(), TIMES, st.integers(1, 60 * 24 * 40), st.decimals("0", "999", places=2))
def test_adding_a_later_version_never_reprices_the_past(
    versions: list[TariffVersion], start: datetime, minutes: int, quantity: Decimal
) -> None:
    end = start + timedelta(minutes=minutes)
    before = price_interval(versions, E, quantity, start, end, D(0), 2, CST)
    later = [*versions, version(end + timedelta(seconds=1), FlatPrice(D(99), name="base"))]
    assert price_interval(later, E, quantity, start, end, D(0), 2, CST) == before


# --- periods -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "at", "start", "end"),
    [
        (CalendarPeriod.MONTH, local(2024, 2, 29, 23, 59), local(2024, 2, 1), local(2024, 3, 1)),
        (CalendarPeriod.MONTH, local(2024, 12, 31, 23), local(2024, 12, 1), local(2025, 1, 1)),
        # 2024-03-31 20:00 UTC is already April 1st in Shanghai.
        (CalendarPeriod.MONTH, datetime(2024, 3, 31, 20, tzinfo=UTC), local(2024, 4, 1), local(2024, 5, 1)),
        (CalendarPeriod.YEAR, local(2024, 7, 1), local(2024, 1, 1), local(2025, 1, 1)),
    ],
)
def test_local_periods(kind: CalendarPeriod, at: datetime, start: datetime, end: datetime) -> None:
    assert (period_start(kind, at, CST), period_end(kind, at, CST)) == (start, end)


def test_month_starts_between_is_strict() -> None:
    assert month_starts_between(local(2024, 1, 1), local(2024, 4, 1), CST) == [local(2024, 2, 1), local(2024, 3, 1)]
