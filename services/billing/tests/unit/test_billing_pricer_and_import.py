"""Pure pieces of the service shell: the pricer's fast path agrees with the domain, owners split an
interval exactly, and the estate CSV parser reports every bad line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_billing.domain import tariffs
from shuidian_billing.domain.estate_csv import parse_estate_csv
from shuidian_billing.domain.meters import Owner, split_by_owner
from shuidian_billing.domain.tariff_config import FixedIn, FlatIn, Pricer, StoredVersion, to_domain
from shuidian_shared.messages import Utility

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(tariff_id: int, start: datetime, *components: FlatIn | FixedIn) -> StoredVersion:
    return StoredVersion(tariff_id, components, to_domain(tariff_id, Utility.WATER, start, components))


VERSIONS = [
    version(1, T0, FlatIn(unit_price=Decimal("3.10")), FixedIn(amount_per_month=Decimal("5.00"))),
    version(
        2,
        T0 + timedelta(days=45),
        FlatIn(unit_price=Decimal("3.45")),
        FlatIn(name="sewage", unit_price=Decimal("0.95")),
    ),
]


@given(
    start_minutes=st.integers(0, 90 * 24 * 60),
    length_minutes=st.integers(0, 40 * 24 * 60),
    quantity=st.decimals(min_value=0, max_value=1000, places=3),
)
def test_the_fast_path_prices_exactly_like_the_domain(
    start_minutes: int, length_minutes: int, quantity: Decimal
) -> None:
    start = T0 + timedelta(minutes=start_minutes)
    end = start + timedelta(minutes=length_minutes)
    pricer = Pricer(Utility.WATER, VERSIONS)
    fast = pricer.price(quantity, start, end, Decimal(0), 1, None)
    domain = tariffs.price_interval([v.domain for v in VERSIONS], Utility.WATER, quantity, start, end, Decimal(0), 1)
    assert fast.lines == domain.lines
    assert fast.total == domain.total


def owner(account: str, start: int | None, end: int | None) -> Owner:
    return Owner(
        account,
        Utility.ELECTRICITY,
        None if start is None else T0 + timedelta(days=start),
        None if end is None else T0 + timedelta(days=end),
        1,
    )


@pytest.mark.parametrize(
    ("owners", "start", "end", "expected"),
    [
        ([owner("a", None, None)], 0, 10, [("a", "7")]),
        ([owner("a", None, 5), owner("b", 5, None)], 0, 10, [("a", "3.5"), ("b", "3.5")]),
        ([owner("a", None, 2), owner("b", 6, None)], 0, 10, [("a", "1.4"), (None, "2.8"), ("b", "2.8")]),
        ([owner("a", None, 5), owner("b", 5, None)], 5, 5, [("b", "7")]),  # an instant belongs to who holds it
        ([owner("a", 20, None)], 0, 10, [(None, "7")]),  # vacant: recorded, charged to nobody
    ],
)
def test_owners_split_an_interval_pro_rata_by_time(
    owners: list[Owner], start: int, end: int, expected: list[tuple[str | None, str]]
) -> None:
    shares = split_by_owner(owners, T0 + timedelta(days=start), T0 + timedelta(days=end), Decimal(7))
    assert [(o.account_id if o else None, q) for o, _, _, q in shares] == [(a, Decimal(q)) for a, q in expected]
    assert sum(q for _, _, _, q in shares) == 7


HEADER = (
    "building,floor,room,code,area_m2,household_size,electricity_meter,water_meter,tenant_id,tenant_name,phone,move_in"
)


@pytest.mark.parametrize(
    ("lines", "errors"),
    [
        (["A,1,101,A-101,45.50,2,E1,W1,T1,王五,139,2026-01-01"], []),
        (["A,1,101,A-101,0,2,E1,,,,,"], [(2, "area_m2")]),
        (["A,1,101,A-101,1.234,2,E1,,,,,"], [(2, "area_m2")]),
        (["A,1,101,A-101,40,0,E1,,,,,"], [(2, "household_size")]),
        (["A,1,101,A-101,40,1,E1,,,,,", "A,1,101,A-102,40,1,E2,,,,,"], [(3, "room")]),
        (["A,1,101,A-101,40,1,E1,,,,,", "A,1,102,A-101,40,1,E1,,,,,"], [(3, "code"), (3, "electricity_meter")]),
        (["A,1,101,A-101,40,1,E 1,,,,,"], [(2, "electricity_meter")]),
        (["A,1,101,A-101,40,1,,,T1,,,yesterday"], [(2, "move_in"), (2, "tenant_name")]),
        ([",1,101,A-101,40,1,,,,,,"], [(2, "building")]),
        ([], [(1, "")]),
    ],
)
def test_the_estate_csv_reports_every_bad_line(lines: list[str], errors: list[tuple[int, str]]) -> None:
    rows, found = parse_estate_csv("\n".join([HEADER, *lines]))
    assert sorted((e["line"], e["column"]) for e in found) == errors
    if not errors:
        assert [r.code for r in rows] == ["A-101"]


def test_a_csv_without_the_columns_is_refused() -> None:
    _, errors = parse_estate_csv("room,area\n1,2\n")
    assert errors[0]["line"] == 1
    assert "missing" in errors[0]["error"]
