"""Alarm lifecycle against real PostgreSQL: one open alarm per (source, type), clear rather than duplicate."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio

from shuidian_alarm.adapters.container import Components
from shuidian_alarm.app import compose
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.events import BALANCE_EXHAUSTED, BALANCE_LOW, on_balance
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def c(database_url: str) -> AsyncIterator[Components]:
    engine = await migrated_engine(database_url, "shuidian_alarm", "alarm")
    mqtt = MqttLink("mqtt://127.0.0.1:1", service="alarm", instance="t")
    async with httpx.AsyncClient() as http:
        yield compose(AlarmSettings(environment="test"), engine, Outbox(engine, mqtt, "alarm"), mqtt, http)
    await engine.dispose()


def balance(account: str, kind: BalanceEventKind, level: BalanceLevel, seq: int, amount: str) -> BalanceEvent:
    return BalanceEvent(
        source="billing-test",
        account_id=account,
        kind=kind,
        level=level,
        balance=Decimal(amount),
        sequence=seq,
        meters=(),
    )


async def test_retriggers_update_one_alarm_and_restoration_clears(c: Components) -> None:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    for seq in range(3):
        await c.evaluator.on_balance(balance(account, BalanceEventKind.LOW_1, BalanceLevel.LOW_1, seq, "15.00"), "")
    await c.evaluator.on_balance(balance(account, BalanceEventKind.LOW_2, BalanceLevel.LOW_2, 4, "3.00"), "")
    await c.evaluator.on_balance(balance(account, BalanceEventKind.EXHAUSTED, BalanceLevel.EXHAUSTED, 5, "0.00"), "")
    open_alarms = await c.alarms.alarms(account, None, "active", 100)
    assert sorted(a["alarm_type"] for a in open_alarms) == [BALANCE_EXHAUSTED, BALANCE_LOW]
    low = next(a for a in open_alarms if a["alarm_type"] == BALANCE_LOW)
    assert (low["occurrences"], low["severity"]) == (4, "major")

    await c.evaluator.on_balance(balance(account, BalanceEventKind.RESTORED, BalanceLevel.OK, 6, "50.00"), "")
    assert await c.alarms.alarms(account, None, "active", 100) == []
    assert len(await c.alarms.alarms(account, None, "cleared", 100)) == 2

    # A new episode opens a new alarm instead of reviving the cleared one.
    await c.evaluator.on_balance(balance(account, BalanceEventKind.LOW_1, BalanceLevel.LOW_1, 7, "12.00"), "")
    history = await c.alarms.alarms(account, BALANCE_LOW, None, 100)
    assert [a["state"] for a in history] == ["active", "cleared"]


async def test_acknowledged_alarm_stays_the_one_open_alarm(c: Components) -> None:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    await c.evaluator.on_balance(balance(account, BalanceEventKind.LOW_1, BalanceLevel.LOW_1, 1, "15.00"), "")
    (alarm,) = await c.alarms.alarms(account, None, None, 10)
    acked = await c.alarms.acknowledge(alarm["alarm_id"], "manager-1")
    assert acked["state"] == "acknowledged"
    await c.evaluator.on_balance(balance(account, BalanceEventKind.LOW_2, BalanceLevel.LOW_2, 2, "4.00"), "")
    (still,) = await c.alarms.alarms(account, None, None, 10)
    assert (still["alarm_id"], still["state"], still["occurrences"]) == (alarm["alarm_id"], "acknowledged", 2)


@pytest.mark.parametrize(
    ("kind", "level", "expected"),
    [
        (BalanceEventKind.LOW_1, BalanceLevel.LOW_1, [("raise", BALANCE_LOW)]),
        (BalanceEventKind.LOW_2, BalanceLevel.LOW_2, [("raise", BALANCE_LOW)]),
        (BalanceEventKind.EXHAUSTED, BalanceLevel.EXHAUSTED, [("raise", BALANCE_EXHAUSTED)]),
        (
            BalanceEventKind.RESTORED,
            BalanceLevel.OK,
            [("clear", BALANCE_EXHAUSTED), ("clear", BALANCE_LOW)],
        ),
        (BalanceEventKind.RESTORED, BalanceLevel.LOW_1, [("clear", BALANCE_EXHAUSTED)]),
        (BalanceEventKind.CHANGED, BalanceLevel.OK, [("clear", BALANCE_LOW)]),
        (BalanceEventKind.CHANGED, BalanceLevel.LOW_1, []),
    ],
)
def test_balance_rules(kind: BalanceEventKind, level: BalanceLevel, expected: list[tuple[str, str]]) -> None:
    decisions = on_balance(balance("a-1", kind, level, 1, "1.00"))
    assert [("raise" if isinstance(d, Raise) else "clear", d.alarm_type) for d in decisions] == expected
