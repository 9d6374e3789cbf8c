"""Billing against real PostgreSQL: readings become accruals and whole-fen ledger postings; the
ledger is append-only and balanced; balances equal the sum of entries; top-ups are idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.billing_harness import flat_priced_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import BalanceEvent, Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await flat_priced_engine(database_url)
    yield engine
    await engine.dispose()


def make_billing(engine: AsyncEngine) -> Billing:
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="t"), "billing")
    return Billing.build(engine, outbox, BillingSettings(environment="test"), "billing-test")


async def new_account(billing: Billing, credit: str = "0") -> tuple[str, str]:
    account, meter = f"acc-{uuid.uuid4().hex[:8]}", f"E-{uuid.uuid4().hex[:8]}"
    await billing.accounts.put_account(account, "test", Decimal("20"), Decimal("5"), Decimal("0"))
    await billing.accounts.bind_meter(meter, account, Utility.ELECTRICITY)
    if Decimal(credit):
        await billing.credits.top_up(account, Decimal(credit), "cash", None, f"open-{account}")
    return account, meter


def reading(meter: str, minutes: int, kwh: str) -> Reading:
    return Reading.create(
        meter,
        Utility.ELECTRICITY,
        T0 + timedelta(minutes=minutes),
        registers={"energy_active_import_total": Decimal(kwh)},
    )


async def balance_events(engine: AsyncEngine, account: str) -> list[BalanceEvent]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT payload FROM billing.outbox WHERE topic LIKE :t ORDER BY id"),
            {"t": f"%/accounts/{account}/balance"},
        )
        return [BalanceEvent.model_validate_json(bytes(r.payload)) for r in rows]


async def ledger_sum(engine: AsyncEngine, account: str) -> Decimal:
    async with engine.connect() as conn:
        total: Decimal = (
            await conn.execute(
                text("SELECT coalesce(sum(amount), 0) FROM billing.ledger_entries WHERE ledger_account = :a"),
                {"a": f"household:{account}"},
            )
        ).scalar_one()
        return total


async def test_shuffled_duplicated_stream_bills_like_a_clean_one_to_the_cent(engine: AsyncEngine) -> None:
    billing = make_billing(engine)
    clean_account, clean_meter = await new_account(billing, "100.00")
    messy_account, messy_meter = await new_account(billing, "100.00")
    rng = random.Random(3)
    registers = [Decimal("1000.00")]
    for _ in range(180):  # three hours of one-minute readings, 0–0.37 kWh each
        registers.append(registers[-1] + Decimal(rng.randint(0, 37)) / 100)
    clean = [reading(clean_meter, i, str(v)) for i, v in enumerate(registers)]
    await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=tuple(clean)), "")
    messy = [reading(messy_meter, i, str(v)) for i, v in enumerate(registers)]
    # The opening reading is the commissioning read; everything after it comes shuffled, with duplicates.
    opening, rest = messy[0], messy[1:]
    rest = rest + rng.sample(messy, 60)
    rng.shuffle(rest)
    await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(opening,)), "")
    for start in range(0, len(rest), 25):
        await billing.readings.on_readings(
            ReadingBatch(source="t", gateway_id="g", readings=tuple(rest[start : start + 25])), ""
        )
    await billing.poster.flush(before=T0 + timedelta(hours=5))
    # A reading that arrives after a later one bills nothing itself (STALE); the later one already
    # covered its quantity, so the total over the stream is still last − opening.
    expected_quantity = registers[-1] - registers[0]
    async with engine.connect() as conn:
        quantities = {
            row.meter_id: row.q
            for row in await conn.execute(
                text(
                    "SELECT meter_id, sum(quantity) AS q FROM billing.usage_hourly WHERE meter_id = ANY(:m) GROUP BY meter_id"
                ),
                {"m": [clean_meter, messy_meter]},
            )
        }
    assert quantities == {clean_meter: expected_quantity, messy_meter: expected_quantity}
    exact = expected_quantity * Decimal("0.613")
    clean_account_view = await billing.accounts.account(clean_account)
    messy_account_view = await billing.accounts.account(messy_account)
    assert clean_account_view["available"] == messy_account_view["available"] == Decimal("100.00") - exact
    # Whole fen were posted, the sub-fen remainder is carried, nothing lost or invented.
    posted = Decimal("100.00") - await ledger_sum(engine, clean_account)
    assert posted <= exact < posted + Decimal("0.01")
    assert await ledger_sum(engine, messy_account) == await ledger_sum(engine, clean_account)


async def test_balance_equals_sum_of_entries_and_ledger_is_append_only(engine: AsyncEngine) -> None:
    billing = make_billing(engine)
    account, meter = await new_account(billing, "30.00")
    await billing.readings.on_readings(
        ReadingBatch(source="t", gateway_id="g", readings=(reading(meter, 0, "10"), reading(meter, 30, "25.5"))), ""
    )
    await billing.poster.flush(before=T0 + timedelta(hours=2))
    async with engine.connect() as conn:
        cached = (
            await conn.execute(
                text("SELECT balance FROM billing.balances WHERE ledger_account = :a"), {"a": f"household:{account}"}
            )
        ).scalar_one()
        unbalanced = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT txn_id FROM billing.ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0) t"
                )
            )
        ).scalar_one()
    assert (
        cached == await ledger_sum(engine, account) == Decimal("30.00") - Decimal("9.50")
    )  # 15.5 kWh × 0.613 = 9.5015
    assert unbalanced == 0
    for statement in (
        "UPDATE billing.ledger_entries SET amount = 0",
        "DELETE FROM billing.ledger_entries",
        "TRUNCATE billing.ledger_entries",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    with pytest.raises(DBAPIError, match="does not balance"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.ledger_entries (txn_id, ledger_account, amount, kind) VALUES (:t, 'x', 1, 'forged')"
                ),
                {"t": uuid.uuid4()},
            )


async def test_top_up_is_idempotent_and_a_conflicting_replay_is_refused(engine: AsyncEngine) -> None:
    billing = make_billing(engine)
    account, _ = await new_account(billing)
    first = await billing.credits.top_up(account, Decimal("50.00"), "wechat", "wx-1", "key-0001")
    again = await billing.credits.top_up(account, Decimal("50.00"), "wechat", "wx-1", "key-0001")
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["payment_id"] == first["payment_id"]
    with pytest.raises(Conflict):
        await billing.credits.top_up(account, Decimal("60.00"), "wechat", "wx-1", "key-0001")
    assert await ledger_sum(engine, account) == Decimal("50.00")


@pytest.mark.parametrize(
    ("low_1", "low_2", "grace"),
    [("5", "5", "0"), ("5", "6", "0"), ("5", "0", "0"), ("5", "-1", "2"), ("5", "1", "-1")],
)
async def test_thresholds_the_levels_cannot_use_are_refused_when_saved(
    engine: AsyncEngine, low_1: str, low_2: str, grace: str
) -> None:
    # The rule that classifies balances (level1 > level2 > −grace, warning levels not negative) is the
    # one an account is checked against when saved: none is saved that would fail its first top-up.
    billing = make_billing(engine)
    account = f"acc-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BillingError) as refused:
        await billing.accounts.put_account(account, "t", Decimal(low_1), Decimal(low_2), Decimal(grace))
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_thresholds")
    with pytest.raises(NotFound):
        await billing.accounts.account(account)
    await billing.accounts.put_account(account, "t", Decimal("5"), Decimal("1"), Decimal("0"))
    assert (await billing.credits.top_up(account, Decimal("3.00"), "cash", None, f"k-{account}"))["amount"] == 3


async def test_exhaustion_and_restoration_emit_one_event_each(engine: AsyncEngine) -> None:
    billing = make_billing(engine)
    account, meter = await new_account(billing, "10.00")
    register = Decimal("100")
    for i in range(40):  # each step costs 0.613; consumption continues below zero (a fact)
        register += 1
        await billing.readings.on_readings(
            ReadingBatch(source="t", gateway_id="g", readings=(reading(meter, i, str(register)),)), ""
        )
    view = await billing.accounts.account(account)
    assert view["available"] < 0
    assert view["level"] == "exhausted"
    await billing.credits.top_up(account, Decimal("0.50"), "cash", None, f"small-{account}")  # still under water
    await billing.credits.top_up(account, Decimal("100.00"), "cash", None, f"big-{account}")
    kinds = [e.kind.value for e in await balance_events(engine, account)]
    # 0.50 leaves it exhausted (no event); 100.00 restores it, straight to ok.
    assert kinds == ["low_1", "low_2", "exhausted", "restored"]
    assert (await billing.accounts.account(account))["level"] == "ok"
    sequences = [e.sequence for e in await balance_events(engine, account)]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)


async def test_an_improving_level_is_persisted_and_announced(engine: AsyncEngine) -> None:
    billing = make_billing(engine)
    account, meter = await new_account(billing, "21.00")
    await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=(reading(meter, 0, "0"),)), "")
    await billing.readings.on_readings(
        ReadingBatch(source="t", gateway_id="g", readings=(reading(meter, 30, "30"),)), ""
    )
    assert (await billing.accounts.account(account))["level"] == "low_2"  # 21.00 − 18.39
    await billing.credits.top_up(account, Decimal("50.00"), "cash", None, f"up-{account}")
    assert (await billing.accounts.account(account))["level"] == "ok"
    events = await balance_events(engine, account)
    assert [(e.kind.value, e.level.value) for e in events] == [("low_2", "low_2"), ("changed", "ok")]


async def test_each_purse_announces_its_last_event_again_while_it_matters(engine: AsyncEngine) -> None:
    """Anti-entropy: a consumer that lost a balance event gets it again, unchanged (same sequence
    and message id, so one that applied it skips it); an ok purse whose change is old is quiet."""
    billing = make_billing(engine)

    async def run_low_then_top_up(top_up: str) -> str:
        account, meter = await new_account(billing, "1.00")
        batch = (reading(meter, 0, "100"), reading(meter, 60, "105"))  # 3.065 of consumption
        await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=batch), "")
        if Decimal(top_up):
            await billing.credits.top_up(account, Decimal(top_up), "cash", None, f"t-{account}")
        return account

    exhausted, recent, quiet = [await run_low_then_top_up(amount) for amount in ("0", "50.00", "50.00")]
    async with engine.begin() as conn:  # the quiet account's last change was two days ago
        await conn.execute(
            text("UPDATE billing.purse_levels SET changed_at = now() - interval '2 days' WHERE account_id = :a"),
            {"a": quiet},
        )
    before = {a: await balance_events(engine, a) for a in (exhausted, recent, quiet)}
    assert [e.level.value for e in (before[exhausted][-1], before[recent][-1], before[quiet][-1])] == [
        "exhausted",
        "ok",
        "ok",
    ]

    assert await billing.levels.reannounce(page=2) >= 2  # pages of two: the walk must not skip or repeat a purse
    after = {a: await balance_events(engine, a) for a in (exhausted, recent, quiet)}
    assert after[exhausted] == [*before[exhausted], before[exhausted][-1]]
    assert after[recent] == [*before[recent], before[recent][-1]]
    assert after[quiet] == before[quiet]


async def test_one_replica_at_a_time_announces_levels_again(engine: AsyncEngine) -> None:
    """The round is taken under an advisory lock: while another replica holds it, this one publishes nothing."""
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="t"), "billing")
    billing = Billing.build(engine, outbox, BillingSettings(environment="test", level_reannounce_seconds=0.05), "t")
    account, meter = await new_account(billing, "1.00")
    batch = (reading(meter, 0, "100"), reading(meter, 60, "105"))
    await billing.readings.on_readings(ReadingBatch(source="t", gateway_id="g", readings=batch), "")
    before = len(await balance_events(engine, account))
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_advisory_lock(hashtext('billing-reannounce'))"))
        await other.commit()
        rounds = asyncio.create_task(billing.levels.reannounce_loop())
        try:
            await asyncio.sleep(0.4)
            assert len(await balance_events(engine, account)) == before
            await other.execute(text("SELECT pg_advisory_unlock(hashtext('billing-reannounce'))"))
            await other.commit()
            async with asyncio.timeout(10):
                while len(await balance_events(engine, account)) == before:
                    await asyncio.sleep(0.05)
        finally:
            rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rounds
