"""Strict input at the edge: one canonical money form, strict months, and no NUL anywhere a request
can carry one — each a 4xx before any backend is called."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from shuidian_gateway.api.conventions import (
    AMOUNT_MAX,
    AMOUNT_PATTERN,
    MONEY_MAX,
    MONEY_PATTERN,
    Amount,
    MoneyIn,
    MonthPath,
    MonthQuery,
    RefuseNul,
    carries_nul,
)
from shuidian_gateway.testing import Harness, gateway_harness

MONEY = TypeAdapter(MoneyIn)
AMOUNT = TypeAdapter(Amount)
# Written the way: each was once credited or crashed the gateway.
LOOSE = ["1_000", "1e3", "1E3", "٥٠", "５０", "+50", "-50", " 50", "50 ", "50.", ".5", "00050", "0050.00", "50.001"]
LOOSE += ["1" * 30, "5,000", "0x32", "Infinity", "NaN", "50\n", "", "5 0", "50.0.0", "１.00"]


def canonical(text: str) -> bool:
    """The grammar, written without a regular expression: digits, at most one dot with 1–2 digits after."""
    whole, dot, cents = text.partition(".")
    ascii_digits = set("0123456789")
    if not whole or not set(whole) <= ascii_digits or (len(whole) > 1 and whole[0] == "0"):
        return False
    if dot and (not 1 <= len(cents) <= 2 or not set(cents) <= ascii_digits):
        return False
    return len(whole) <= 7


@given(st.text(alphabet=st.sampled_from("0123456789.-+e_ ٥５,"), max_size=12) | st.text(max_size=12))
def test_money_is_accepted_exactly_when_canonical(text: str) -> None:
    try:
        value = MONEY.validate_python(text)
    except ValidationError:
        assert not canonical(text)
        return
    assert canonical(text)
    assert value == Decimal(text)
    assert value <= MONEY_MAX


@given(st.from_regex(MONEY_PATTERN, fullmatch=True))
def test_every_string_of_the_documented_pattern_is_money(text: str) -> None:
    assert MONEY.validate_python(text) == Decimal(text)


@given(st.from_regex(MONEY_PATTERN, fullmatch=True))
def test_a_payment_amount_is_the_documented_pattern_exactly(text: str) -> None:
    expected = re.fullmatch(AMOUNT_PATTERN, text) is not None
    try:
        AMOUNT.validate_python(text)
    except ValidationError:
        assert not expected
        return
    assert expected
    assert Decimal("0") < Decimal(text) <= AMOUNT_MAX


@given(st.integers() | st.floats() | st.booleans() | st.none())
def test_a_json_number_is_never_money(value: Any) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_python(value)


@pytest.mark.parametrize("text", LOOSE)
def test_the_loose_forms_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_json(f'"{text}"'.encode() if "\n" not in text else b'"50\\n"')


def test_money_serialises_as_the_string_it_was() -> None:
    assert MONEY.dump_json(MONEY.validate_python("50.5")) == b'"50.50"'
    assert AMOUNT.json_schema()["pattern"] == AMOUNT_PATTERN


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (rb'{"a": "x\u0000"}', True),
        (rb'{"a": "x\U0000"}', True),
        (rb'{"a": "x\\\u0000"}', True),  # an escaped backslash, then the NUL escape
        (rb'{"a": "x\\u0000"}', False),  # an escaped backslash followed by the letters u0000
        (rb'{"a\u0000": 1}', True),
        (b'{"a": "x\x00"}', True),
        (rb'{"a": "x\u0001"}', False),
    ],
)
def test_nul_is_found_in_json_bodies(raw: bytes, expected: bool) -> None:
    assert carries_nul("/v1/x", b"/v1/x", b"", b"application/json", raw) is expected


def test_nul_is_found_in_paths_queries_and_forms() -> None:
    assert carries_nul("/v1/a\x00", b"/v1/a%00", b"", b"", b"")
    assert carries_nul("/v1/a", b"/v1/a", b"q=%00", b"", b"")
    assert carries_nul("/v1/a", b"/v1/a", b"", b"application/x-www-form-urlencoded", b"username=a%00")
    assert not carries_nul("/v1/a", b"/v1/a", b"q=%2500", b"application/octet-stream", b"\x00")


def month_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RefuseNul)

    @app.get("/statements/{month}")
    async def statement(month: MonthPath) -> str:
        return month

    @app.get("/report")
    async def report(month: MonthQuery) -> str:
        return month

    return app


@pytest.mark.parametrize(
    ("month", "status"),
    [
        ("2026-11", 200),
        ("2000-01", 200),
        ("2099-12", 200),
        ("0000-01", 422),
        ("9999-12", 422),
        ("1999-12", 422),
        ("2100-01", 422),
        ("2026-00", 422),
        ("2026-13", 422),
        ("2026-1", 422),
        ("٢٠٢٦-01", 422),
        ("２０２６-01", 422),
    ],
)
async def test_months_are_this_century_in_ascii(month: str, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=month_app()), base_url="http://t") as client:
        assert (await client.get(f"/statements/{month}")).status_code == status
        assert (await client.get("/report", params={"month": month})).status_code == status


# -- through the gateway, in front of backends that record every call ---------------------------------


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        yield harness


def _backend_calls(gw: Harness, needle: str) -> list[tuple[str, str]]:
    return [call for call in gw.fake.calls if needle in call[1]]


@pytest.mark.integration
@pytest.mark.parametrize("amount", [*LOOSE, 50, 50.0, 1000, "0", "0.00", "100000.00"])
async def test_a_loose_amount_never_reaches_billing(gw: Harness, amount: Any) -> None:
    before = len(_backend_calls(gw, "/topups"))
    async with gw.client("cashier") as cashier:
        answer = await cashier.post(
            "/v1/accounts/A-A/topups", json={"amount": amount}, headers={"Idempotency-Key": f"loose-{amount!a}"[:90]}
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert len(_backend_calls(gw, "/topups")) == before


@pytest.mark.integration
async def test_a_canonical_amount_is_credited(gw: Harness) -> None:
    async with gw.client("cashier") as cashier:
        answer = await cashier.post(
            "/v1/accounts/A-A/topups", json={"amount": "50.5"}, headers={"Idempotency-Key": "canonical-amount-1"}
        )
    assert answer.status_code in (200, 201), answer.text


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("GET", "/v1/alarms?source_id=%00", {}),
        ("GET", "/v1/alarms?source_id=a%00b", {}),
        ("GET", "/v1/me/accounts?x=%00", {}),
        ("GET", "/v1/accounts/A%00A", {}),
        ("POST", "/v1/accounts/A-A/subsidies", {"content": b'{"amount": "1.00", "reason": "x\\u0000"}'}),
        ("POST", "/v1/accounts/A-A/topups", {"content": b'{"amount": "1.00", "reference": "\\u0000"}'}),
        ("POST", "/v1/auth/token", {"data": {"grant_type": "password", "username": "a\x00", "password": "p"}}),
    ],
)
async def test_nul_anywhere_is_a_422_before_any_backend(
    gw: Harness, method: str, url: str, kwargs: dict[str, Any]
) -> None:
    calls = len(gw.fake.calls)
    headers = {"Idempotency-Key": "nul-key-" + str(abs(hash(url)))}
    if "content" in kwargs:
        headers["Content-Type"] = "application/json"
    async with gw.client("admin") as admin:
        answer = await admin.request(method, url, headers=headers, **kwargs)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert len(gw.fake.calls) == calls
