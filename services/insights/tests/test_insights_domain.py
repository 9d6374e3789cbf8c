"""Pure rules: comparisons (property-tested), advice figures and money, habit clusters on known shapes,
line loss with completeness."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_insights.domain import advice, clusters, line_loss, monthly
from shuidian_insights.domain.stats import percentile
from shuidian_shared.contracts.insights import TariffSpec

TZ = ZoneInfo("Asia/Shanghai")
TOU = TariffSpec.model_validate(
    {
        "components": [
            {
                "kind": "tou",
                "rates": [{"label": "峰", "unit_price": "0.80"}, {"label": "谷", "unit_price": "0.30"}],
                "segments": [{"start": "08:00", "rate": "峰"}, {"start": "22:00", "rate": "谷"}],
            }
        ]
    }
)
FLAT = TariffSpec.model_validate({"components": [{"kind": "flat", "unit_price": "0.50"}]})
TIERED = TariffSpec.model_validate(
    {
        "components": [
            {
                "kind": "tiered",
                "blocks": [
                    {"label": "一档", "width": "100", "unit_price": "0.50"},
                    {"label": "二档", "width": None, "unit_price": "0.80"},
                ],
            }
        ]
    }
)
usage = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(1000), places=2)


def hours(days: int, per_hour: list[Decimal], start: date = date(2026, 3, 1)) -> tuple[tuple[datetime, Decimal], ...]:
    out = []
    for d in range(days):
        midnight = datetime.combine(start + timedelta(days=d), datetime.min.time(), TZ)
        out += [(midnight.replace(hour=h), per_hour[h]) for h in range(24)]
    return tuple(out)


# --- comparison ----------------------------------------------------------------------------------


@given(own=usage, peers=st.lists(usage, min_size=5, max_size=60))
def test_comparison_figures_follow_the_peers(own: Decimal, peers: list[Decimal]) -> None:
    item = advice.comparison("electricity", own, peers)
    assert item is not None
    typical = percentile(sorted(peers), Decimal(50))
    efficient = percentile(sorted(peers), Decimal(20))
    assert efficient <= typical
    # Efficient homes use no more than typical ones, so the gap to them is never smaller.
    assert int(item.figures["vs_efficient_pct"]) >= int(item.figures["vs_similar_pct"])
    assert Decimal(item.figures["similar_median"]) == typical.quantize(Decimal("0.001"))
    assert item.inputs["peers"] == str(len(peers))


@given(value=usage, count=st.integers(5, 30))
def test_a_home_like_all_its_peers_is_zero_per_cent_off(value: Decimal, count: int) -> None:
    item = advice.comparison("water", value, [value] * count)
    assert item is not None
    assert item.figures["vs_similar_pct"] == "0"
    assert item.figures["vs_efficient_pct"] == "0"


@given(own=usage, peers=st.lists(usage, min_size=0, max_size=4))
def test_too_few_peers_claim_nothing(own: Decimal, peers: list[Decimal]) -> None:
    assert advice.comparison("electricity", own, peers) is None


def test_the_example_from_the_issue() -> None:
    peers = [Decimal(v) for v in (80, 90, 100, 100, 100, 110, 120, 70, 70, 70)]
    item = advice.comparison("electricity", Decimal("123.5"), peers)
    assert item is not None
    assert item.figures["vs_similar_pct"] == "30"  # median 95
    assert "相似家庭多用 30%" in item.text_zh


def test_similar_homes_are_near_in_area_and_size() -> None:
    peers = [
        advice.Peer("same", Decimal(60), 3, Decimal(1)),
        advice.Peer("close", Decimal(70), 4, Decimal(2)),
        advice.Peer("big", Decimal(90), 3, Decimal(3)),
        advice.Peer("crowded", Decimal(60), 6, Decimal(4)),
        advice.Peer("me", Decimal(60), 3, Decimal(5)),
    ]
    assert advice.similar(Decimal(60), 3, peers, "me") == [Decimal(1), Decimal(2)]


# --- advice --------------------------------------------------------------------------------------

EVENING = [Decimal("0.2")] * 8 + [Decimal("0.5")] * 10 + [Decimal("1.5")] * 4 + [Decimal("0.2")] * 2


def test_base_load_is_the_night_minimum_and_priced() -> None:
    window = advice.Window("electricity", hours(30, EVENING), FLAT, 3, 30)
    item = advice.base_load(window)
    assert item is not None
    assert item.figures["base_load_kw"] == "0.200"
    # 0.2 kW × 24 h × 30 days × ¥0.50
    assert item.figures["cost_per_month"] == "72.00"
    assert item.saving_per_month is None  # a cost, never a claimed saving


def test_peak_share_and_the_exact_saving_of_shifting() -> None:
    window = advice.Window("electricity", hours(30, EVENING), TOU, 3, 30)
    item = advice.peak_share(window)
    assert item is not None
    peak = sum(EVENING[8:22], Decimal(0)) * 30
    assert item.figures["peak_quantity"] == str(peak.quantize(Decimal("0.001")))
    # A fifth of the peak use moved costs 0.30 instead of 0.80 a unit.
    assert item.saving_per_month == (peak * Decimal("0.2") * Decimal("0.5")).quantize(Decimal("0.01"))


def test_no_time_of_use_no_shift_saving() -> None:
    assert advice.peak_share(advice.Window("electricity", hours(30, EVENING), FLAT, 3, 30)) is None


def test_tier_forecast_names_the_day_and_the_extra() -> None:
    window = advice.Window("electricity", hours(10, [Decimal("0.25")] * 24), TIERED, 3, 30)
    # 6 a day: 60 after 10 days; 100 is passed on day 17 (60 + 7 × 6 = 102); 180 projected in 30 days.
    item = advice.tier_forecast(window, Decimal(60), date(2026, 4, 11), 30)
    assert item is not None
    assert item.figures["tier_2_from"] == "2026-04-17"
    assert item.figures["extra_cost"] == "24.00"  # 80 in tier 2 × ¥0.30 more


def test_no_tier_forecast_while_the_month_stays_in_tier_1() -> None:
    window = advice.Window("electricity", hours(10, [Decimal("0.1")] * 24), TIERED, 3, 30)
    assert advice.tier_forecast(window, Decimal(24), date(2026, 4, 11), 30) is None


def test_water_running_every_night_is_a_leak_with_its_cost() -> None:
    leaking = [Decimal("0.01")] * 24
    leaking[19] = Decimal("0.3")
    window = advice.Window("water", hours(30, leaking), FLAT, 3, 30)
    item = advice.night_flow(window)
    assert item is not None
    assert item.figures["flow_m3_per_hour"] == "0.010"
    assert item.saving_per_month == Decimal("3.60")  # 0.01 × 24 × 30 × ¥0.50
    dry = [Decimal(0)] * 24
    dry[19] = Decimal("0.3")
    assert advice.night_flow(advice.Window("water", hours(30, dry), FLAT, 3, 30)) is None


def test_seasonal_change_compares_with_the_window_before() -> None:
    window = advice.Window("electricity", hours(30, [Decimal("0.5")] * 24), None, 3, 30)
    item = advice.seasonal_change(window, Decimal(300))
    assert item is not None
    assert item.figures["change_pct"] == "20"
    assert advice.seasonal_change(window, None) is None


# --- clusters ------------------------------------------------------------------------------------


def _shape(kind: str, rng: random.Random) -> tuple[float, ...]:
    base = [0.2] * 24
    peaks = {"morning": range(6, 9), "evening": range(18, 22), "night": range(0, 5)}[kind]
    for h in peaks:
        base[h] = 3.0
    return tuple(v * rng.uniform(0.85, 1.15) for v in base)


def test_clustering_recovers_known_shapes() -> None:
    rng = random.Random(7)
    kinds = ["morning", "evening", "night"]
    truth = [kinds[i % 3] for i in range(300)]
    points = [clusters.normalise(_shape(kind, rng)) for kind in truth]
    assert all(p is not None for p in points)
    result = clusters.choose_k([p for p in points if p is not None], seed=1)
    assert result.k == 3
    # Every true group lands in one cluster, and different groups in different clusters.
    mapping = {kind: {label for label, t in zip(result.labels, truth, strict=True) if t == kind} for kind in kinds}
    assert all(len(labels) == 1 for labels in mapping.values())
    assert len({next(iter(labels)) for labels in mapping.values()}) == 3
    assert result.silhouette > 0.5


def test_an_empty_day_has_no_shape() -> None:
    assert clusters.normalise([0.0] * 24) is None


# --- line loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("master", "subs", "judged", "loss_pct", "exceeded"),
    [
        (Decimal(100), {"a": Decimal(48), "b": Decimal(48)}, True, Decimal("4.00"), False),
        (Decimal(100), {"a": Decimal(48), "b": Decimal(30)}, True, Decimal("22.00"), True),  # bypass on b
        (Decimal(100), {"a": Decimal(48), "b": None}, False, None, False),  # b silent: not judged
        (None, {"a": Decimal(48), "b": Decimal(48)}, False, None, False),
        (Decimal(0), {"a": Decimal(0), "b": Decimal(0)}, False, None, False),
    ],
)
def test_line_loss_is_judged_only_on_complete_data(
    master: Decimal | None, subs: dict[str, Decimal | None], judged: bool, loss_pct: Decimal | None, exceeded: bool
) -> None:
    verdict = line_loss.judge(master, subs, threshold_pct=Decimal(8), min_completeness_pct=Decimal(100))
    assert (verdict.judged, verdict.loss_pct, verdict.exceeded) == (judged, loss_pct, exceeded)


# --- the monthly report notice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "window", "due"),
    [
        (date(2026, 12, 1), 3, "2026-11"),
        (date(2026, 12, 3), 3, "2026-11"),
        (date(2026, 12, 4), 3, None),
        (date(2027, 1, 1), 3, "2026-12"),
        (date(2026, 3, 1), 1, "2026-02"),
    ],
)
def test_the_month_before_is_due_in_the_first_days(today: date, window: int, due: str | None) -> None:
    assert monthly.due_month(today, window) == due


@pytest.mark.parametrize(
    ("usage", "zh", "en"),
    [
        (
            [monthly.Usage("electricity", Decimal("120"), Decimal("100"))],
            "用电 120.0 度，比上月多 20.0%",
            "Electricity 120.0 kWh, 20.0% more than the month before",
        ),
        (
            [monthly.Usage("water", Decimal("4.5"), Decimal("6"))],
            "用水 4.5 立方米，比上月少 25.0%",
            "Water 4.5 m³, 25.0% less than the month before",
        ),
        ([monthly.Usage("electricity", Decimal("7"), Decimal("7"))], "与上月持平", "the same as the month before"),
        ([monthly.Usage("electricity", Decimal("7"), None)], "用电 7.0 度。", "Electricity 7.0 kWh."),
        ([monthly.Usage("electricity", Decimal("7"), Decimal(0))], "用电 7.0 度。", "Electricity 7.0 kWh."),
    ],
)
def test_the_notice_says_the_months_use_against_the_month_before(usage: list[monthly.Usage], zh: str, en: str) -> None:
    title_zh, body_zh, title_en, body_en = monthly.notice("2026-11", usage)
    assert (title_zh, title_en) == ("2026年11月用能报告", "Your November 2026 usage report")
    assert zh in body_zh
    assert en in body_en


def test_january_compares_with_the_december_before() -> None:
    assert monthly.previous_month("2027-01") == "2026-12"
    assert monthly.previous_month("2026-11") == "2026-10"
