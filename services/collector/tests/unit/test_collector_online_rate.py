"""Availability of one meter over a window from its online/offline edges (pure, table-driven)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shuidian_collector.domain.availability import OnlineEdge, online_seconds, rate

T0 = datetime(2026, 12, 1, tzinfo=UTC)
H = 3600.0


def edges(*pairs: tuple[float, bool]) -> list[OnlineEdge]:
    return [OnlineEdge("m", online, T0 + timedelta(hours=hours)) for hours, online in pairs]


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ((), (0.0, 0.0)),  # never seen: nothing observed
        (((-5, True),), (24 * H, 24 * H)),  # online since before the window
        (((-5, False),), (0.0, 24 * H)),
        (((-5, True), (6, False), (12, True)), (18 * H, 24 * H)),
        (((6, True),), (18 * H, 18 * H)),  # first known inside the window: only that part is observed
        (((6, False), (18, True)), (6 * H, 18 * H)),
        (((-1, True), (0, False)), (0.0, 24 * H)),  # an edge exactly at the start decides the start
        (((-1, True), (24, False)), (24 * H, 24 * H)),  # an edge at the end changes nothing inside
        (((-1, True), (3, True), (5, True)), (24 * H, 24 * H)),  # repeated states (two writers) are harmless
        (((-1, False), (30, True)), (0.0, 24 * H)),  # after the window
    ],
)
def test_online_and_observed_seconds(history: tuple[tuple[float, bool], ...], expected: tuple[float, float]) -> None:
    assert online_seconds(edges(*history), T0, T0 + timedelta(hours=24)) == expected


@pytest.mark.parametrize(
    ("part", "whole", "expected"),
    [(0, 0, None), (1, 3, Decimal("0.3333")), (2, 3, Decimal("0.6667")), (5, 5, Decimal("1.0000")), (0, 7, Decimal(0))],
)
def test_rates_are_decimals_to_four_places(part: int, whole: int, expected: Decimal | None) -> None:
    assert rate(part, whole) == expected
