"""Columns sent as one array literal (`store.array`, `store.text_array`) reach PostgreSQL exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters import store
from shuidian_billing.adapters.sql import Stamps, fetch
from shuidian_kit.db import create_engine

pytestmark = pytest.mark.integration

HOSTILE_TEXT = [
    "E-0001",
    "",
    "NULL",
    "null",
    " leading and trailing ",
    'say "峰"',
    "back\\slash\\",
    "a,b",
    "{braces}",
    "tab\there",
    "line\nbreak",
    "\\N",
    "尖峰平谷",
    None,
    "'quote'",
]
NUMBERS = [
    Decimal("0"),
    Decimal("-0.000001"),
    Decimal("1000.50"),
    Decimal("1E+3"),
    Decimal("999999.99"),
    Decimal("0.123456789012345678901234567890"),
    Decimal("-12345678901234567890.5"),
    None,
    7,
]


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=1)
    yield engine
    await engine.dispose()


async def test_text_survives_quoting_exactly(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        got = (
            await conn.execute(text("SELECT CAST(CAST(:a AS text) AS text[])"), {"a": store.text_array(HOSTILE_TEXT)})
        ).scalar_one()
    assert got == HOSTILE_TEXT


async def test_numbers_keep_their_value_and_scale(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        got = (
            await conn.execute(text("SELECT CAST(CAST(:a AS text) AS numeric[])"), {"a": store.array(NUMBERS)})
        ).scalar_one()
    assert got == [None if n is None else Decimal(n) for n in NUMBERS]
    assert [None if g is None else g.as_tuple().exponent for g in got][:3] == [0, -6, -2]


async def test_timestamps_keep_the_instant_whatever_the_offset(engine: AsyncEngine) -> None:
    base = datetime(2026, 11, 2, 23, 59, 59, 999999, tzinfo=UTC)
    stamps = [
        base,
        base.astimezone(timezone(timedelta(hours=8))),
        base.astimezone(timezone(timedelta(hours=-3, minutes=-30))),
        datetime(1999, 12, 31, tzinfo=UTC),
        base,  # repeated: served from the cache
    ]
    async with engine.connect() as conn:
        await conn.execute(text("SET TIME ZONE 'Asia/Shanghai'"))
        got = (
            await conn.execute(text("SELECT CAST(CAST(:a AS text) AS timestamptz[])"), {"a": Stamps().array(stamps)})
        ).scalar_one()
    assert got == stamps


async def test_a_driver_read_opening_a_transaction_runs_inside_it(engine: AsyncEngine) -> None:
    # SQLAlchemy begins lazily; a FOR UPDATE read sent to the driver first must not run on its own.
    async with engine.begin() as conn:
        [row] = await fetch(conn, "SELECT txid_current() AS txid, $1::text[] AS meters", ["E-1", "E-2"])
        same = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
    assert row["txid"] == same
    assert row["meters"] == ["E-1", "E-2"]
