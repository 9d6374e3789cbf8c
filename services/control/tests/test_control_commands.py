"""Control against real PostgreSQL: exactly one trip per exhaustion and one close per restoration,
whatever duplicates and reordering the balance events arrive with."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.commands import CommandService
from shuidian_control.settings import ControlSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandResult,
    CommandStatus,
    MeterRef,
    RelayState,
    Utility,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_control", "control")
    yield engine
    await engine.dispose()


def service(engine: AsyncEngine) -> CommandService:
    # The outbox only writes rows here; nothing is published (no link is started).
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="control", instance="t"), "control")
    return CommandService(engine, outbox, ControlSettings(environment="test"), "control-test")


def event(account: str, meters: tuple[MeterRef, ...], kind: BalanceEventKind, sequence: int) -> BalanceEvent:
    level = {
        BalanceEventKind.EXHAUSTED: BalanceLevel.EXHAUSTED,
        BalanceEventKind.RESTORED: BalanceLevel.OK,
    }.get(kind, BalanceLevel.LOW_1)
    return BalanceEvent(
        source="billing-test",
        account_id=account,
        kind=kind,
        level=level,
        balance=Decimal("0.00"),
        sequence=sequence,
        meters=meters,
    )


async def commands_for(engine: AsyncEngine, meter_id: str) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, state FROM control.commands WHERE meter_id = :m ORDER BY created_at"), {"m": meter_id}
        )
        return [(r.kind, r.state) for r in rows]


async def test_one_trip_per_exhaustion_under_duplicates_and_reordering(engine: AsyncEngine) -> None:
    control = service(engine)
    account = f"acc-{uuid.uuid4().hex[:8]}"
    meter = MeterRef(meter_id=f"E-{uuid.uuid4().hex[:8]}", utility=Utility.ELECTRICITY)
    water = MeterRef(meter_id=f"W-{uuid.uuid4().hex[:8]}", utility=Utility.WATER)
    # Truth: low1 (1), exhausted (2), restored (3), exhausted (4), restored (5).
    kinds = [
        BalanceEventKind.LOW_1,
        BalanceEventKind.EXHAUSTED,
        BalanceEventKind.RESTORED,
        BalanceEventKind.EXHAUSTED,
        BalanceEventKind.RESTORED,
    ]
    stream = [event(account, (meter, water), k, i + 1) for i, k in enumerate(kinds)]
    delivered = stream + random.Random(7).sample(stream, len(stream)) + stream[:3]
    for e in delivered:
        await control.on_balance(e, "")
    issued = await commands_for(engine, meter.meter_id)
    # Replays and reordered copies carry older sequences and are ignored: one trip per exhaustion,
    # one close per restoration, exactly as the clean stream.
    kinds_issued = [k for k, _ in issued]
    assert kinds_issued == ["trip", "direct_close", "trip", "direct_close"]
    assert await commands_for(engine, water.meter_id) == []  # water is not prepaid here


async def test_in_order_stream_gives_exactly_one_trip_and_one_close(engine: AsyncEngine) -> None:
    control = service(engine)
    account = f"acc-{uuid.uuid4().hex[:8]}"
    meter = MeterRef(meter_id=f"E-{uuid.uuid4().hex[:8]}", utility=Utility.ELECTRICITY)
    for i, kind in enumerate(
        [
            BalanceEventKind.LOW_1,
            BalanceEventKind.LOW_2,
            BalanceEventKind.EXHAUSTED,
            BalanceEventKind.EXHAUSTED,
            BalanceEventKind.RESTORED,
        ]
    ):
        await control.on_balance(event(account, (meter,), kind, i + 1), "")
        await control.on_balance(event(account, (meter,), kind, i + 1), "")  # duplicate delivery
    issued = await commands_for(engine, meter.meter_id)
    assert [k for k, _ in issued] == ["trip", "direct_close"]
    assert issued[0][1] == "cancelled"  # the close superseded the unconfirmed trip
    async with engine.connect() as conn:
        queued = (
            await conn.execute(
                text("SELECT count(*) FROM control.outbox WHERE topic LIKE :t"), {"t": f"%/{meter.meter_id}/command"}
            )
        ).scalar_one()
    assert queued == 2


async def test_results_move_commands_to_terminal_states_and_late_results_do_not_reopen(engine: AsyncEngine) -> None:
    control = service(engine)
    account = f"acc-{uuid.uuid4().hex[:8]}"
    meter = MeterRef(meter_id=f"E-{uuid.uuid4().hex[:8]}", utility=Utility.ELECTRICITY)
    await control.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    (command,) = await control.commands(meter.meter_id, None, 10)
    confirmed = CommandResult(
        source="collector-test",
        command_id=command["command_id"],
        meter_id=meter.meter_id,
        kind=command["kind"],
        status=CommandStatus.CONFIRMED,
        relay=RelayState.OPEN,
    )
    await control.on_result(confirmed, "")
    late_failure = confirmed.model_copy(update={"status": CommandStatus.FAILED, "detail": "late"})
    await control.on_result(late_failure, "")
    detail = await control.command(command["command_id"])
    assert detail["state"] == "confirmed"
    assert [e["state"] for e in detail["events"]] == ["sent", "confirmed", "failed"]  # audit keeps everything
    shadow = await control.shadow(meter.meter_id)
    assert (shadow["desired_relay"], shadow["reported_relay"]) == ("open", "open")
