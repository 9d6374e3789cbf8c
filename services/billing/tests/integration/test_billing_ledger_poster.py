"""The hourly flush to the cent: closed hours post whole fen through the domain's `HourlyAccrual`,
remainders carry per meter (one stored before the flush included), subsidy is drawn in meter order
across the flush, a common meter is charged to its estate's pool, and an open hour stays accrued."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.billing_harness import flat_priced_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox

pytestmark = pytest.mark.integration
H0 = datetime(2025, 6, 1, 8, tzinfo=UTC)
D = Decimal


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await flat_priced_engine(database_url)
    yield engine
    await engine.dispose()


async def test_flush_posts_whole_fen_carries_the_rest_and_draws_subsidy_in_meter_order(engine: AsyncEngine) -> None:
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="t"), "billing")
    billing = Billing.build(engine, outbox, BillingSettings(environment="test"), "billing-test")
    tag = uuid.uuid4().hex[:8]
    account, m1, m2, common = f"acc-{tag}", f"P{tag}-1", f"P{tag}-2", f"P{tag}-c"
    estate_pool, purse = f"common:est-{tag}", f"household:acc-{tag}"
    await billing.accounts.put_account(account, "poster", D(20), D(5), D(0))
    await billing.credits.grant_subsidy(account, D("0.05"), "test", f"subsidy-{tag}")
    h1, h2 = H0 + timedelta(hours=1), H0 + timedelta(hours=2)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO billing.accruals (meter_id, hour, account_id, utility, quantity, amount) VALUES "
                "(:m1, :h0, :a, 'electricity', 1, 0.0155), (:m1, :h1, :a, 'electricity', 1, 0.0250), "
                "(:m1, :h2, :a, 'electricity', 1, 0.5), (:m2, :h0, :a, 'electricity', 1, 0.0400), "
                "(:c, :h0, :pool, 'electricity', 1, 0.123456)"
            ),
            {"m1": m1, "m2": m2, "c": common, "a": account, "pool": estate_pool, "h0": H0, "h1": h1, "h2": h2},
        )
        await conn.execute(
            text(
                "INSERT INTO billing.carries (meter_id, account_id, utility, remainder, posted_through) "
                "VALUES (:m2, :a, 'electricity', 0.009, :before)"
            ),
            {"m2": m2, "a": account, "before": H0 - timedelta(hours=1)},
        )

    assert await billing.poster.flush(before=h2) == 4

    async with engine.connect() as conn:
        entries = {
            (r.meter_id, r.period_start, r.ledger_account): r.amount
            for r in await conn.execute(
                text(
                    "SELECT meter_id, period_start, ledger_account, amount FROM billing.ledger_entries "
                    "WHERE kind = 'consumption' AND meter_id = ANY(:m)"
                ),
                {"m": [m1, m2, common]},
            )
        }
        carries = {
            r.meter_id: (r.remainder, r.posted_through)
            for r in await conn.execute(
                text("SELECT meter_id, remainder, posted_through FROM billing.carries WHERE meter_id = ANY(:m)"),
                {"m": [m1, m2, common]},
            )
        }
        left = [
            (r.meter_id, r.hour, r.amount)
            for r in await conn.execute(
                text("SELECT meter_id, hour, amount FROM billing.accruals WHERE meter_id = ANY(:m)"),
                {"m": [m1, m2, common]},
            )
        ]
    revenue, subsidy, pool = "revenue:electricity", f"{purse}:subsidy", f"shared:est-{tag}"
    assert entries == {
        # m1 08:00: 0.0155 → 0.01 (carry 0.0055), all from the 0.05 subsidy
        (m1, H0, subsidy): D("-0.01"),
        (m1, H0, revenue): D("0.01"),
        # m1 09:00: 0.0250 + 0.0055 → 0.03 (carry 0.0005), subsidy left 0.04 → 0.01
        (m1, h1, subsidy): D("-0.03"),
        (m1, h1, revenue): D("0.03"),
        # m2 08:00: 0.0400 + the stored 0.009 → 0.04 (carry 0.009): the last 0.01 of subsidy, 0.03 paid
        (m2, H0, purse): D("-0.03"),
        (m2, H0, subsidy): D("-0.01"),
        (m2, H0, revenue): D("0.04"),
        # the common meter: 0.123456 → 0.12 from the estate's pool, no subsidy
        (common, H0, pool): D("-0.12"),
        (common, H0, revenue): D("0.12"),
    }
    assert carries == {m1: (D("0.0005"), h1), m2: (D("0.009"), H0), common: (D("0.003456"), H0)}
    assert left == [(m1, h2, D("0.5"))]  # the hour that begins at the cut-off stays accrued
    assert (await billing.accounts.account(account))["subsidy_balance"] == D("0.00")
