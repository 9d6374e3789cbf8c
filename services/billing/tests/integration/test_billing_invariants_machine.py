"""DESIGN.md invariants 1–5 and 8 as a hypothesis state machine against real PostgreSQL.

Hypothesis delivers each meter's readings in any order, any number of times or never; retries
top-ups under the same key (and tries a conflicting replay); reverses top-ups (冲正), sometimes
twice; flushes hours to the ledger at any point. After every step an independent auditor that
knows only the clean stream, the keys and the tariff recomputes every balance from first
principles and compares it with what billing says, to the cent.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.domain.tariff_config import FlatIn
from shuidian_billing.errors import Conflict
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
PRICE = Decimal("0.737")
EPOCH = datetime(2040, 1, 1, tzinfo=UTC)  # this machine's own tariff era
STEPS = 24  # readings per meter, ten minutes apart: four hours
METERS = 2
CENT = Decimal("0.01")


class LedgerMachine(RuleBasedStateMachine):
    database_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = self.run(migrated_engine(self.database_url, "shuidian_billing", "billing"))
        outbox = Outbox(self.engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="m"), "billing")
        self.billing = Billing.build(self.engine, outbox, BillingSettings(environment="test"), "billing-machine")
        self.seen_entries: dict[int, tuple[str, Decimal]] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()

    @initialize(
        increments=st.lists(
            st.lists(st.integers(0, 400), min_size=STEPS, max_size=STEPS), min_size=METERS, max_size=METERS
        )
    )
    def commission(self, increments: list[list[int]]) -> None:
        self.run(self.billing.tariffs.put_tariff_version(Utility.ELECTRICITY, EPOCH, (FlatIn(unit_price=PRICE),)))
        tag = uuid.uuid4().hex[:8]
        self.accounts = [f"acc-{tag}-{i}" for i in range(METERS)]
        self.meters = [f"M-{tag}-{i}" for i in range(METERS)]
        # Clean streams: cumulative registers rising 0–4 kWh per ten minutes (always plausible).
        self.streams: list[list[Reading]] = []
        for meter, steps in zip(self.meters, increments, strict=True):
            register, stream = Decimal("5000.00"), []
            for i, step in enumerate(steps):
                register += Decimal(step) / 100
                stream.append(
                    Reading.create(
                        meter,
                        Utility.ELECTRICITY,
                        EPOCH + timedelta(days=1, minutes=10 * i),
                        registers={"energy_active_import_total": register},
                    )
                )
            self.streams.append(stream)
        for account, meter in zip(self.accounts, self.meters, strict=True):
            self.run(self.billing.accounts.put_account(account, "machine", Decimal("20"), Decimal("5"), Decimal("1")))
            self.run(self.billing.accounts.bind_meter(meter, account, Utility.ELECTRICITY))
        # The auditor's own books: what was delivered, which keys credited what, what was reversed.
        self.first_delivered: list[Reading | None] = [None] * METERS
        self.latest_delivered: list[Reading | None] = [None] * METERS
        self.credits: dict[str, tuple[int, Decimal, uuid.UUID]] = {}
        self.reversed: set[str] = set()

    @rule(meter=st.integers(0, METERS - 1), first=st.integers(0, STEPS - 1), count=st.integers(1, 4))
    def deliver(self, meter: int, first: int, count: int) -> None:
        """A batch of consecutive readings, possibly already delivered (duplicates) or older (reordered)."""
        batch = self.streams[meter][first : first + count]
        self.run(self.billing.readings.on_readings(ReadingBatch(source="m", gateway_id="g", readings=tuple(batch)), ""))
        for reading in batch:
            if self.first_delivered[meter] is None:
                self.first_delivered[meter] = reading
            latest = self.latest_delivered[meter]
            if latest is None or reading.sampled_at > latest.sampled_at:
                self.latest_delivered[meter] = reading

    @rule(account=st.integers(0, METERS - 1), key=st.integers(0, 5), cents=st.integers(1, 5000))
    def top_up(self, account: int, key: int, cents: int) -> None:
        """A top-up under a small pool of keys: a replay of a key returns the original, a changed one is refused."""
        name = f"{self.accounts[account]}-key-{key}"
        amount = Decimal(cents) / 100
        known = self.credits.get(name)
        if known is not None and (known[0], known[1]) != (account, amount):
            with pytest.raises(Conflict):
                self.run(self.billing.credits.top_up(self.accounts[account], amount, "wechat", "wx", name))
            return
        result = self.run(self.billing.credits.top_up(self.accounts[account], amount, "wechat", "wx", name))
        assert result["replayed"] == (known is not None)
        self.credits[name] = (account, amount, result["txn_id"])

    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        """冲正 of a credited top-up; reversing it again is refused."""
        if not self.credits:
            return
        name = data.draw(st.sampled_from(sorted(self.credits)))
        txn = self.credits[name][2]
        if name in self.reversed:
            with pytest.raises(Conflict):
                self.run(self.billing.credits.reverse(txn, "auditor", "again"))
            return
        self.run(self.billing.credits.reverse(txn, "auditor", "hypothesis correction"))
        self.reversed.add(name)

    @rule(hours=st.integers(0, 6))
    def flush(self, hours: int) -> None:
        self.run(self.billing.poster.flush(before=EPOCH + timedelta(days=1, hours=hours)))

    # --- the auditor ----------------------------------------------------------------------------

    def expected_charge(self, meter: int) -> Decimal:
        """Invariant 3 from first principles: (latest delivered register − opening register) × price."""
        first, latest = self.first_delivered[meter], self.latest_delivered[meter]
        if first is None or latest is None:
            return Decimal(0)
        register = "energy_active_import_total"
        return (latest.registers[register] - first.registers[register]) * PRICE

    def expected_credit(self, account: int) -> Decimal:
        return sum(
            (
                amount
                for name, (owner, amount, _) in self.credits.items()
                if owner == account and name not in self.reversed
            ),
            Decimal(0),
        )

    @invariant()
    def balances_match_first_principles(self) -> None:
        if not hasattr(self, "accounts"):
            return
        for i, account in enumerate(self.accounts):
            view = self.run(self.billing.accounts.account(account))
            exact = self.expected_charge(i)
            # Invariants 3 and 4: the available balance is credits − exact charges, even below zero.
            assert view["available"] == self.expected_credit(i) - exact
            # Only whole fen are posted; what is posted never exceeds the exact charge by a fen.
            posted = self.expected_credit(i) - view["balance"]
            assert posted == posted.quantize(CENT)
            assert Decimal(0) <= posted <= exact.quantize(CENT, rounding=ROUND_DOWN)

    @invariant()
    def ledger_is_append_only_balanced_and_bounded(self) -> None:
        if not hasattr(self, "accounts"):
            return
        with_entries = self.run(self._ledger_facts())
        entries, unbalanced, mismatched, per_hour = with_entries
        # Invariant 1: nothing seen before has changed or vanished.
        for entry_id, seen in self.seen_entries.items():
            assert entries.get(entry_id) == seen
        self.seen_entries = entries
        # Invariant 2: every transaction balances; each cached balance is the sum of its entries.
        assert unbalanced == 0
        assert mismatched == []
        # Invariant 8: at most one consumption posting per meter and hour, whatever the delivery.
        assert per_hour <= 1

    async def _ledger_facts(self) -> tuple[dict[int, tuple[str, Decimal]], int, list[Any], int]:
        households = [f"household:{a}" for a in self.accounts]
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT entry_id, ledger_account, amount FROM billing.ledger_entries WHERE ledger_account = ANY(:a)"
                ),
                {"a": households},
            )
            entries = {r.entry_id: (r.ledger_account, r.amount) for r in rows}
            unbalanced = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM (SELECT txn_id FROM billing.ledger_entries WHERE txn_id IN "
                        "(SELECT txn_id FROM billing.ledger_entries WHERE ledger_account = ANY(:a)) "
                        "GROUP BY txn_id HAVING sum(amount) <> 0) t"
                    ),
                    {"a": households},
                )
            ).scalar_one()
            mismatched = (
                await conn.execute(
                    text(
                        "SELECT b.ledger_account FROM billing.balances b LEFT JOIN (SELECT ledger_account, sum(amount) AS s "
                        "FROM billing.ledger_entries WHERE ledger_account = ANY(:a) GROUP BY ledger_account) e "
                        "USING (ledger_account) WHERE b.ledger_account = ANY(:a) AND b.balance <> coalesce(e.s, 0)"
                    ),
                    {"a": households},
                )
            ).all()
            per_hour = (
                await conn.execute(
                    text(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(DISTINCT txn_id) AS n FROM billing.ledger_entries "
                        "WHERE kind = 'consumption' AND meter_id = ANY(:m) GROUP BY meter_id, period_start) t"
                    ),
                    {"m": self.meters},
                )
            ).scalar_one()
        return entries, unbalanced, list(mismatched), per_hour


def test_ledger_invariants_hold_under_any_delivery(database_url: str) -> None:
    LedgerMachine.database_url = database_url
    machine = LedgerMachine.TestCase
    machine.settings = settings(
        max_examples=12,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine().runTest()


def test_the_database_refuses_to_rewrite_the_ledger(database_url: str) -> None:
    async def attempt() -> None:
        engine = await migrated_engine(database_url, "shuidian_billing", "billing")
        try:
            for statement in ("UPDATE billing.ledger_entries SET amount = 0", "DELETE FROM billing.ledger_entries"):
                with pytest.raises(DBAPIError, match="append-only"):
                    async with engine.begin() as conn:
                        await conn.execute(text(statement))
        finally:
            await engine.dispose()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(attempt())
    finally:
        loop.close()
