"""Control against real PostgreSQL, playing billing and the collector by calling the handlers directly: exactly one
trip per exhaustion and one close per restoration, protected windows, 保电, retries until the TTL, stuck relays,
reconcile, stale results, restarts and schedules. Time is a controlled clock; commands are read from the outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.adapters import shadows
from shuidian_control.adapters.calendars import StatutoryCalendar
from shuidian_control.adapters.parts import ControlParts
from shuidian_control.app import build_control
from shuidian_control.domain import lifecycle
from shuidian_control.domain.calendar import FixedCalendar
from shuidian_control.domain.operations import OperatorRequest, Outcome
from shuidian_control.domain.policies import EstateSettings, KeepPowerReason
from shuidian_control.domain.schedules import ScheduleSpec
from shuidian_control.errors import ControlError
from shuidian_control.settings import ControlSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandRequested,
    CommandResult,
    CommandStatus,
    CommandUpdate,
    DeviceState,
    GatewayStatus,
    MeterRef,
    RelayState,
    Utility,
    ValveState,
)

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
NO_WINDOWS: dict[str, Any] = {
    "nights_start": None,
    "nights_end": None,
    "protect_weekends": False,
    "protect_holidays": False,
}
LEVEL_OF = {
    BalanceEventKind.EXHAUSTED: BalanceLevel.EXHAUSTED,
    BalanceEventKind.RESTORED: BalanceLevel.OK,
    BalanceEventKind.CHANGED: BalanceLevel.OK,
    BalanceEventKind.LOW_1: BalanceLevel.LOW_1,
    BalanceEventKind.LOW_2: BalanceLevel.LOW_2,
}


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_control", "control")
    yield engine
    await engine.dispose()


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now.astimezone(UTC)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_control(engine: AsyncEngine, clock: Clock | None = None, calendar: Any = None, **options: Any) -> ControlParts:
    # The outbox only writes rows here; nothing is published (no link is started).
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="control", instance="t"), "control")
    return build_control(
        engine,
        outbox,
        ControlSettings(environment="test", **options),
        "control-test",
        clock=clock or Clock(WEDNESDAY_NOON),
        calendar=calendar or FixedCalendar(),
    )


def ids(prefix: str = "E") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def event(account: str, meters: tuple[MeterRef, ...], kind: BalanceEventKind, sequence: int) -> BalanceEvent:
    return BalanceEvent(
        source="billing-test",
        account_id=account,
        kind=kind,
        level=LEVEL_OF[kind],
        balance=Decimal("-0.50") if kind is BalanceEventKind.EXHAUSTED else Decimal("20.00"),
        sequence=sequence,
        meters=meters,
    )


def electricity() -> MeterRef:
    return MeterRef(meter_id=ids("E"), utility=Utility.ELECTRICITY)


async def sent(engine: AsyncEngine, meter_id: str) -> list[CommandRequested]:
    """Every CommandRequested queued for the meter, in order (what the collector would receive)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT payload FROM control.outbox WHERE topic = :t ORDER BY id"),
            {"t": topics.meter_command(meter_id)},
        )
        return [CommandRequested.model_validate_json(bytes(r.payload)) for r in rows]


async def updates(engine: AsyncEngine, meter_id: str) -> list[CommandUpdate]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT payload FROM control.outbox WHERE topic = :t ORDER BY id"),
            {"t": topics.command_update(meter_id)},
        )
        return [CommandUpdate.model_validate_json(bytes(r.payload)) for r in rows]


async def command_rows(engine: AsyncEngine, meter_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM control.commands WHERE meter_id = :m ORDER BY seq"), {"m": meter_id}
        )
        return list(rows)


def result(
    request: CommandRequested,
    status: CommandStatus,
    *,
    relay: RelayState | None = None,
    valve: ValveState | None = None,
    answer: str | None = None,
    at: datetime | None = None,
    detail: str = "",
) -> CommandResult:
    """What the collector publishes for one attempt."""
    return CommandResult(
        source="collector-test",
        command_id=request.command_id,
        meter_id=request.meter_id,
        kind=request.kind,
        status=status,
        detail=detail,
        relay=relay,
        valve=valve,
        request_frame="68 01 02 16",
        response_frame=answer,
        attempt=request.attempt,
        **({"occurred_at": at} if at else {}),
    )


def device_state(
    meter_id: str, relay: RelayState, *, keep_power: bool | None = None, at: datetime | None = None
) -> DeviceState:
    """What the collector publishes (retained) when a meter's state changes."""
    return DeviceState(
        source="collector-test",
        meter_id=meter_id,
        gateway_id="gw-test",
        online=True,
        relay=relay,
        keep_power=keep_power,
        **({"occurred_at": at} if at else {}),
    )


# --- exactly once under interleaving (hypothesis) -------------------------------------------------------------------

ACTIONABLE = st.sampled_from(list(BalanceEventKind))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[BalanceEventKind], list[int], list[int]]:
    """A true stream of balance changes, and a delivery of it with duplicates and reordering, interleaved with the
    collector's moves after each event: 0 nothing, 1 confirm the oldest unanswered command, 2 report a reading."""
    truth = draw(st.lists(ACTIONABLE, min_size=1, max_size=12))
    order = draw(st.lists(st.integers(0, len(truth) - 1), min_size=1, max_size=30))
    moves = draw(st.lists(st.integers(0, 2), min_size=len(order), max_size=len(order)))
    return truth, order, moves


def expected_commands(truth: list[BalanceEventKind], order: list[int]) -> list[RelayState]:
    """The model: events at or below the highest sequence seen are dropped; each change of intent is one command."""
    seen, desired, issued = 0, None, []
    for index in order:
        sequence = index + 1
        if sequence <= seen:
            continue
        seen = sequence
        target = {BalanceEventKind.EXHAUSTED: RelayState.OPEN, BalanceEventKind.RESTORED: RelayState.CLOSED}.get(
            truth[index]
        )
        if target is not None and target is not desired:
            desired = target
            issued.append(target)
    return issued


async def _interleaved(database_url: str, truth: list[BalanceEventKind], order: list[int], moves: list[int]) -> None:
    engine = create_engine(database_url)
    try:
        control = make_control(engine, prepaid_water=True, **NO_WINDOWS)
        account = ids("acc")
        meter, water = electricity(), MeterRef(meter_id=ids("W"), utility=Utility.WATER)
        stream = [event(account, (meter, water), kind, i + 1) for i, kind in enumerate(truth)]
        answered = {meter.meter_id: 0, water.meter_id: 0}
        device: dict[str, RelayState] = {}  # what each meter really is, as the collector would read it
        for index, move in zip(order, moves, strict=True):
            await control.automation.on_balance(stream[index], "")
            for ref in (meter, water):
                queued = await sent(engine, ref.meter_id)
                if move == 1 and answered[ref.meter_id] < len(queued):
                    # Confirmations come in order, for superseded commands too (the collector had already run them).
                    request = queued[answered[ref.meter_id]]
                    supply = lifecycle.supply_after(request.kind)
                    assert supply is not None
                    device[ref.meter_id] = supply
                    answer = result(request, CommandStatus.CONFIRMED, relay=supply, valve=lifecycle.valve_of(supply))
                    await control.ledger.on_result(answer, "")
                    answered[ref.meter_id] += 1
                elif move == 2 and ref.meter_id in device:
                    supply = device[ref.meter_id]
                    water_meter = ref.utility is Utility.WATER
                    reading = DeviceState(
                        source="collector-test",
                        meter_id=ref.meter_id,
                        gateway_id="gw-hypothesis",
                        online=True,
                        relay=None if water_meter else supply,
                        valve=lifecycle.valve_of(supply) if water_meter else None,
                    )
                    await control.automation.on_device_state(reading, "")
        expected = expected_commands(truth, order)
        electric = [c.kind for c in await sent(engine, meter.meter_id)]
        valves = [c.kind for c in await sent(engine, water.meter_id)]
        # Readings of the real device never make reconcile send anything extra: exactly the model's commands.
        assert electric == [CommandKind.TRIP if t is RelayState.OPEN else CommandKind.DIRECT_CLOSE for t in expected]
        assert valves == [CommandKind.VALVE_CLOSE if t is RelayState.OPEN else CommandKind.VALVE_OPEN for t in expected]
        # Never two trips (or two closes) in a row: one per exhaustion, one per restoration.
        assert all(a != b for a, b in pairwise(electric))
        rows = await command_rows(engine, meter.meter_id)
        assert len(rows) == len(electric)
        assert all(r.attempt == 1 for r in rows)
    finally:
        await engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries())
def test_exactly_one_trip_and_one_close_under_interleaved_events(
    engine: AsyncEngine, database_url: str, case: tuple[list[BalanceEventKind], list[int], list[int]]
) -> None:
    # Hypothesis drives a synchronous test; each example runs on its own loop (and engine) in a worker thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _interleaved(database_url, *case)).result()


async def test_water_valves_are_left_alone_where_water_is_not_prepaid(engine: AsyncEngine) -> None:
    control = make_control(engine, **NO_WINDOWS)
    water = MeterRef(meter_id=ids("W"), utility=Utility.WATER)
    await control.automation.on_balance(event(ids("acc"), (water,), BalanceEventKind.EXHAUSTED, 1), "")
    assert await sent(engine, water.meter_id) == []


# --- protected windows ----------------------------------------------------------------------------------------------


async def test_trip_in_a_protected_window_is_deferred_then_executed_when_it_ends(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 23, 0, tzinfo=SHANGHAI))  # a Wednesday night
    control = make_control(engine, clock)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    assert await sent(engine, meter.meter_id) == []
    async with engine.connect() as conn:
        deferral = (
            await conn.execute(text("SELECT * FROM control.deferrals WHERE meter_id = :m"), {"m": meter.meter_id})
        ).one()
    assert deferral.due_at == datetime(2026, 11, 26, 7, 0, tzinfo=SHANGHAI)
    assert "night" in deferral.reason
    clock.now = datetime(2026, 11, 26, 6, 59, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    assert await sent(engine, meter.meter_id) == []
    clock.now = datetime(2026, 11, 26, 7, 0, 1, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    (trip,) = await sent(engine, meter.meter_id)
    assert trip.kind is CommandKind.TRIP
    assert "deferred trip due" in trip.reason
    await control.housekeeping.tick()  # due once: the deferral is gone
    assert len(await sent(engine, meter.meter_id)) == 1


async def test_deferred_trip_is_dropped_when_the_account_recovers_and_restoration_is_never_deferred(
    engine: AsyncEngine,
) -> None:
    clock = Clock(datetime(2026, 11, 28, 10, 0, tzinfo=SHANGHAI))  # a Saturday
    control = make_control(engine, clock)
    account, meter = ids("acc"), electricity()
    # Tripped on Friday afternoon, exhausted again after a top-up on Saturday: the second trip waits for Monday.
    clock.now = datetime(2026, 11, 27, 15, 0, tzinfo=SHANGHAI)
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    clock.now = datetime(2026, 11, 28, 10, 0, tzinfo=SHANGHAI)
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.RESTORED, 2), "")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 3), "")
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.TRIP, CommandKind.DIRECT_CLOSE]
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.RESTORED, 4), "")
    clock.now = datetime(2026, 11, 30, 9, 0, tzinfo=SHANGHAI)  # Monday morning
    await control.housekeeping.tick()
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.TRIP, CommandKind.DIRECT_CLOSE]


async def test_a_lost_restoration_announced_again_closes_once(engine: AsyncEngine) -> None:
    """Billing re-announces a purse's last event; control acts on what it missed, once."""
    control = make_control(engine, **NO_WINDOWS)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    restored = event(account, (meter,), BalanceEventKind.RESTORED, 2)  # lost on its way: never handled
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.TRIP]
    for _ in range(3):  # the re-announcement, and later rounds of it
        await control.automation.on_balance(restored, "")
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.TRIP, CommandKind.DIRECT_CLOSE]


async def test_a_lost_event_of_one_purse_is_applied_after_a_later_event_of_the_other(engine: AsyncEngine) -> None:
    """Separate purses: water's exhaustion (#1) is lost, electricity's low balance (#2) arrives; the
    re-announced #1 still trips the water valve, because what was applied is kept per meter."""
    control = make_control(engine, prepaid_water=True, **NO_WINDOWS)
    account, meter = ids("acc"), electricity()
    water = MeterRef(meter_id=ids("W"), utility=Utility.WATER)
    water_exhausted = event(account, (water,), BalanceEventKind.EXHAUSTED, 1)
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.LOW_1, 2), "")
    await control.automation.on_balance(water_exhausted, "")
    await control.automation.on_balance(water_exhausted, "")
    assert [c.kind for c in await sent(engine, water.meter_id)] == [CommandKind.VALVE_CLOSE]
    assert await sent(engine, meter.meter_id) == []


async def test_dates_the_holiday_calendar_does_not_know_are_protected(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2027, 3, 10, 10, 0, tzinfo=SHANGHAI))  # an ordinary Wednesday, past the calendar's data
    control = make_control(engine, clock, StatutoryCalendar())
    meter = electricity()
    await control.automation.on_balance(event(ids("acc"), (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    assert await sent(engine, meter.meter_id) == []
    async with engine.connect() as conn:
        reason = (
            await conn.execute(text("SELECT reason FROM control.deferrals WHERE meter_id = :m"), {"m": meter.meter_id})
        ).scalar_one()
    assert "calendar_unknown" in reason
    assert control.housekeeping.check_calendar().last_year is None


async def test_the_operator_hold_defers_trips_and_lifting_it_releases_them(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock)
    estate, building, meter = ids("est"), ids("bld"), electricity()
    async with engine.begin() as conn:
        await control.store.put_building(conn, building, estate, [meter.meter_id], "tester")
        await control.store.set_hold(conn, estate, "寒潮 cold wave", None, "tester")
    await control.automation.on_balance(event(ids("acc"), (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    await control.housekeeping.tick()
    assert await sent(engine, meter.meter_id) == []
    async with engine.begin() as conn:
        assert await control.store.clear_hold(conn, estate, "weather normal", "tester")
        await control.automation.policy_changed(conn)
    await control.housekeeping.tick()
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.TRIP]


# --- keep-power -----------------------------------------------------------------------------------------------------


async def test_a_keep_power_household_is_never_tripped(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.CHANGED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.MEDICAL, "oxygen", "tester")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 2), "")
    # Neither a deferral falling due, nor reconcile, nor an operator without lifting it trips the household.
    clock.advance(days=7)
    await control.housekeeping.tick()
    await control.automation.reconcile([meter.meter_id], trigger="test")
    _, (outcome,) = await control.automation.operate(
        [meter.meter_id], OperatorRequest(CommandKind.TRIP, "inspection", "tester")
    )
    assert outcome.outcome is Outcome.BLOCKED
    assert "keep-power" in outcome.detail
    # The meter billing names was put in its own keep-power mode; nothing else was sent.
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.KEEP_POWER_ON]
    (keep_on,) = await sent(engine, meter.meter_id)
    await control.ledger.on_result(result(keep_on, CommandStatus.CONFIRMED, relay=RelayState.CLOSED), "")
    # Lifting it with a reason is explicit and recorded; the meter's mode goes off first, the trip waits for it.
    _, (forced,) = await control.automation.operate(
        [meter.meter_id], OperatorRequest(CommandKind.TRIP, "tenant moved out", "tester", lift_keep_power=True)
    )
    assert forced.outcome is Outcome.ISSUE
    assert all(k["subject"] != account for k in await control.store.keep_power())
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [
        CommandKind.KEEP_POWER_ON,
        CommandKind.KEEP_POWER_OFF,
    ]
    keep_off = (await sent(engine, meter.meter_id))[-1]
    await control.ledger.on_result(result(keep_off, CommandStatus.CONFIRMED, relay=RelayState.CLOSED), "")
    assert [c.kind for c in await sent(engine, meter.meter_id)][-1] is CommandKind.TRIP


async def test_setting_keep_power_restores_a_cut_household_and_lifting_it_trips_again(engine: AsyncEngine) -> None:
    control = make_control(engine, Clock(WEDNESDAY_NOON))
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.ELDERLY, "", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    async with engine.begin() as conn:
        await control.store.clear_keep_power(conn, "household", account, "reviewed", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    kinds = [c.kind for c in await sent(engine, meter.meter_id)]
    # The meter's own mode follows; its KEEP_POWER_ON was never confirmed, so the trip is not held.
    assert kinds == [
        CommandKind.TRIP,
        CommandKind.KEEP_POWER_ON,
        CommandKind.DIRECT_CLOSE,
        CommandKind.KEEP_POWER_OFF,
        CommandKind.TRIP,
    ]
    rows = await command_rows(engine, meter.meter_id)
    assert [r.state for r in rows if r.kind == "keep_power_on"] == ["cancelled"]  # superseded by the lift


async def test_estate_keep_power_covers_every_meter_of_the_estate(engine: AsyncEngine) -> None:
    control = make_control(engine, Clock(WEDNESDAY_NOON))
    estate, building, meters = ids("est"), ids("bld"), [electricity(), electricity()]
    async with engine.begin() as conn:
        await control.store.put_building(conn, building, estate, [m.meter_id for m in meters], "tester")
        await control.store.set_keep_power(conn, "estate", estate, KeepPowerReason.OTHER, "heatwave", "tester")
    for meter in meters:
        await control.automation.on_balance(event(ids("acc"), (meter,), BalanceEventKind.EXHAUSTED, 1), "")
        assert [c.kind for c in await sent(engine, meter.meter_id)] == [CommandKind.KEEP_POWER_ON]


async def test_keep_power_lifted_from_an_exhausted_household_trips_once_after_the_meter_confirms_mode_off(
    engine: AsyncEngine,
) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, reconcile_interval_seconds=1, result_timeout_seconds=300)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.CHANGED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.ELDERLY, "", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    (keep_on,) = await sent(engine, meter.meter_id)
    assert keep_on.kind is CommandKind.KEEP_POWER_ON
    await control.ledger.on_result(result(keep_on, CommandStatus.CONFIRMED, relay=RelayState.CLOSED), "")
    shadow = await control.automation.shadow(meter.meter_id)
    assert shadow is not None
    assert (shadow["desired_keep_power"], shadow["reported_keep_power"]) == (True, True)
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 2), "")
    async with engine.begin() as conn:
        await control.store.clear_keep_power(conn, "household", account, "reviewed", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    # KEEP_POWER_OFF goes out; the trip is recorded but held: the meter would refuse it in keep-power mode.
    assert [c.kind for c in await sent(engine, meter.meter_id)] == [
        CommandKind.KEEP_POWER_ON,
        CommandKind.KEEP_POWER_OFF,
    ]
    trip = next(r for r in await command_rows(engine, meter.meter_id) if r.kind == "trip")
    assert (trip.state, trip.attempt) == ("pending", 0)
    # Neither time, nor reconcile, nor a reading still showing keep-power on releases it.
    clock.advance(seconds=30)
    await control.housekeeping.tick()
    await control.automation.reconcile_sweep()
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, keep_power=True), "")
    assert CommandKind.TRIP not in [c.kind for c in await sent(engine, meter.meter_id)]
    # The meter confirms the mode is off: exactly one trip, sent at once; reconcile adds none.
    keep_off = (await sent(engine, meter.meter_id))[-1]
    await control.ledger.on_result(result(keep_off, CommandStatus.CONFIRMED, relay=RelayState.CLOSED), "")
    clock.advance(seconds=5)
    await control.housekeeping.tick()
    await control.automation.reconcile_sweep()
    kinds = [c.kind for c in await sent(engine, meter.meter_id)]
    assert kinds == [CommandKind.KEEP_POWER_ON, CommandKind.KEEP_POWER_OFF, CommandKind.TRIP]
    assert (await sent(engine, meter.meter_id))[-1].command_id == trip.command_id


async def test_a_held_trip_expires_when_the_meter_never_confirms_keep_power_off(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, command_ttl_seconds=60)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.MEDICAL, "", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, keep_power=True), "")
    async with engine.begin() as conn:
        await control.store.clear_keep_power(conn, "household", account, "reviewed", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    clock.advance(seconds=61)
    await control.housekeeping.tick()
    trips = [r for r in await command_rows(engine, meter.meter_id) if r.kind == "trip"]
    assert [(r.state, r.attempt) for r in trips] == [("cancelled", 1), ("expired", 0)]
    assert [c.kind for c in await sent(engine, meter.meter_id)].count(CommandKind.TRIP) == 1  # the first, only


async def test_a_held_trip_is_released_by_a_reading_showing_keep_power_off_when_the_result_is_lost(
    engine: AsyncEngine,
) -> None:
    control = make_control(engine, Clock(WEDNESDAY_NOON))
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.CHANGED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.ELDERLY, "", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, keep_power=True), "")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 2), "")
    async with engine.begin() as conn:
        await control.store.clear_keep_power(conn, "household", account, "reviewed", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    assert CommandKind.TRIP not in [c.kind for c in await sent(engine, meter.meter_id)]
    # A reading saying nothing about keep-power releases nothing; one saying it is off does.
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED), "")
    assert CommandKind.TRIP not in [c.kind for c in await sent(engine, meter.meter_id)]
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, keep_power=False), "")
    kinds = [c.kind for c in await sent(engine, meter.meter_id)]
    assert kinds == [CommandKind.KEEP_POWER_ON, CommandKind.KEEP_POWER_OFF, CommandKind.TRIP]


async def test_reconcile_restores_the_keep_power_mode_of_a_replaced_meter(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, reconcile_interval_seconds=60)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.CHANGED, 1), "")
    async with engine.begin() as conn:
        await control.store.set_keep_power(conn, "household", account, KeepPowerReason.ELDERLY, "", "tester")
        await control.automation.keep_power_changed(conn, [meter.meter_id], "tester")
    (keep_on,) = await sent(engine, meter.meter_id)
    await control.ledger.on_result(result(keep_on, CommandStatus.CONFIRMED, relay=RelayState.CLOSED, at=clock()), "")
    # The meter is replaced: the new one reports keep-power off. Too soon after the last command: nothing yet.
    clock.advance(seconds=30)
    await control.automation.on_device_state(
        device_state(meter.meter_id, RelayState.CLOSED, keep_power=False, at=clock()), ""
    )
    assert len(await sent(engine, meter.meter_id)) == 1
    clock.advance(seconds=31)
    await control.automation.reconcile_sweep()
    again = (await sent(engine, meter.meter_id))[-1]
    assert (again.kind, again.origin.value) == (CommandKind.KEEP_POWER_ON, "reconcile")
    # While it is in flight, neither a sweep nor a report re-sends it.
    await control.automation.reconcile_sweep()
    await control.automation.on_device_state(
        device_state(meter.meter_id, RelayState.CLOSED, keep_power=False, at=clock()), ""
    )
    assert len(await sent(engine, meter.meter_id)) == 2
    await control.ledger.on_result(result(again, CommandStatus.CONFIRMED, relay=RelayState.CLOSED, at=clock()), "")
    shadow = await control.automation.shadow(meter.meter_id)
    assert shadow is not None
    assert shadow["reported_keep_power"] is True


# --- retries, TTL, failures -----------------------------------------------------------------------------------------


async def test_an_offline_meter_is_retried_with_back_off_until_the_ttl_then_expires(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, result_timeout_seconds=10, retry_initial_seconds=2, retry_max_seconds=8)
    meter = electricity()
    _, (outcome,) = await control.automation.operate(
        [meter.meter_id], OperatorRequest(CommandKind.TRIP, "test", "tester", ttl=timedelta(seconds=40))
    )
    assert outcome.command_id is not None
    for _ in range(10):
        requests = await sent(engine, meter.meter_id)
        latest = requests[-1]
        await control.ledger.on_result(result(latest, CommandStatus.FAILED, detail="bus timeout"), "")
        clock.advance(seconds=9)
        await control.housekeeping.tick()
        state = (await control.ledger.command(outcome.command_id))["state"]
        if state == "expired":
            break
    requests = await sent(engine, meter.meter_id)
    assert [r.attempt for r in requests] == list(range(1, len(requests) + 1))
    assert len(requests) >= 3
    assert {r.command_id for r in requests} == {outcome.command_id}  # attempts, not new commands
    detail = await control.ledger.command(outcome.command_id)
    assert detail["state"] == "expired"
    assert [e["attempt"] for e in detail["events"] if e["state"] == "sent"] == [r.attempt for r in requests]
    assert (await updates(engine, meter.meter_id))[-1].state.value == "expired"  # alarm hears of it


async def test_a_sent_attempt_without_any_result_is_re_sent_and_a_late_confirmation_still_counts(
    engine: AsyncEngine,
) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, result_timeout_seconds=10)
    meter = electricity()
    _, (outcome,) = await control.automation.operate([meter.meter_id], OperatorRequest(CommandKind.TRIP, "t", "tester"))
    assert outcome.command_id is not None
    clock.advance(seconds=11)
    await control.housekeeping.tick()
    first, second = await sent(engine, meter.meter_id)
    assert (first.attempt, second.attempt) == (1, 2)
    # Attempt 1's failure arrives after attempt 2 went out: stale, changes nothing; attempt 1's success counts.
    await control.ledger.on_result(result(first, CommandStatus.FAILED, answer="68 EE 16"), "")
    assert (await control.ledger.command(outcome.command_id))["state"] == "sent"
    await control.ledger.on_result(result(first, CommandStatus.CONFIRMED, relay=RelayState.OPEN), "")
    assert (await control.ledger.command(outcome.command_id))["state"] == "confirmed"


async def test_a_stuck_relay_fails_with_the_meters_answer_on_record(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock)
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    (request,) = await sent(engine, meter.meter_id)
    answer = "68 01 00 00 00 00 00 68 9C 00 05 16"
    await control.ledger.on_result(
        result(request, CommandStatus.FAILED, relay=RelayState.CLOSED, answer=answer, detail="relay did not move"), ""
    )
    clock.advance(minutes=5)
    await control.housekeeping.tick()
    detail = await control.ledger.command(request.command_id)
    assert detail["state"] == "failed"
    assert detail["response_frame"] == answer
    assert any(e["response_frame"] == answer for e in detail["events"])
    assert len(await sent(engine, meter.meter_id)) == 1  # a meter that answered is not retried
    assert (await updates(engine, meter.meter_id))[-1].state.value == "failed"
    async with engine.connect() as conn:
        shadow = (
            await conn.execute(text("SELECT * FROM control.shadows WHERE meter_id = :m"), {"m": meter.meter_id})
        ).one()
    assert (shadow.desired_supply, shadow.reported_supply) == ("open", "closed")


FINAL_REFUSALS = {
    # status: (the collector's detail, the prefix control records, the counter that counts it)
    CommandStatus.UNSUPPORTED: (
        "表计不支持此命令 {kind}: not supported by DL/T 645-1997 meters",
        "unsupported",
        "control_commands_unsupported_total",
    ),
    CommandStatus.REJECTED: (
        "采集器拒绝执行，未写入表计: refused by the collector, nothing written: {kind} needs the meter password",
        "rejected",
        "control_commands_rejected_total",
    ),
}


def counted(name: str, kind: CommandKind) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind.value}) or 0.0


@pytest.mark.parametrize("status", list(FINAL_REFUSALS))
@pytest.mark.parametrize("kind", [CommandKind.TRIP, CommandKind.KEEP_POWER_ON, CommandKind.TIME_SYNC])
async def test_a_final_refusal_fails_at_once_and_is_never_retried_or_reconciled(
    engine: AsyncEngine, kind: CommandKind, status: CommandStatus
) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(
        engine, clock, result_timeout_seconds=10, retry_initial_seconds=1, reconcile_interval_seconds=1
    )
    meter = electricity()
    await control.automation.on_device_state(
        device_state(meter.meter_id, RelayState.CLOSED, keep_power=False, at=clock()), ""
    )
    _, (outcome,) = await control.automation.operate([meter.meter_id], OperatorRequest(kind, "test", "tester"))
    assert outcome.command_id is not None
    (request,) = await sent(engine, meter.meter_id)
    template, prefix, counter = FINAL_REFUSALS[status]
    detail = template.format(kind=kind.value)
    before = counted(counter, kind)
    # No response frame: a FAILED like this would be retried; UNSUPPORTED and REJECTED are final.
    await control.ledger.on_result(result(request, status, detail=detail), "")
    command = await control.ledger.command(outcome.command_id)
    assert command["state"] == "failed"
    assert command["detail"].startswith(prefix)
    assert detail in command["detail"]
    assert f"result:{status.value}" in [e["state"] for e in command["events"]]
    assert counted(counter, kind) == before + 1
    update = (await updates(engine, meter.meter_id))[-1]
    assert (update.state.value, update.command_id) == ("failed", outcome.command_id)  # alarm raises on it
    assert update.detail.startswith(prefix)
    for _ in range(5):  # neither retries, nor the result timeout, nor reconcile send it again
        clock.advance(seconds=30)
        await control.housekeeping.tick()
        await control.automation.reconcile_sweep()
        await control.automation.on_device_state(
            device_state(meter.meter_id, RelayState.CLOSED, keep_power=False, at=clock()), ""
        )
    assert len(await sent(engine, meter.meter_id)) == 1
    assert [r.state for r in await command_rows(engine, meter.meter_id)] == ["failed"]
    # A late duplicate of the result changes nothing.
    await control.ledger.on_result(result(request, status, detail=detail), "")
    assert (await control.ledger.command(outcome.command_id))["state"] == "failed"
    assert counted(counter, kind) == before + 1


async def test_a_rejected_deferred_trip_is_neither_retried_nor_deferred_again(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 23, 0, tzinfo=SHANGHAI))  # a Wednesday night: the trip waits for 07:00
    control = make_control(engine, clock, result_timeout_seconds=10, retry_initial_seconds=1)
    account, meter = ids("acc"), electricity()
    await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, at=clock()), "")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    clock.now = datetime(2026, 11, 26, 7, 0, 1, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    (trip,) = await sent(engine, meter.meter_id)
    detail = "采集器拒绝执行，未写入表计: refused by the collector, nothing written: password must be at most 6 digits"
    await control.ledger.on_result(result(trip, CommandStatus.REJECTED, detail=detail), "")
    for _ in range(4):  # the day goes on: retries, due deferrals, reconcile sweeps and readings send nothing
        clock.advance(hours=3)
        await control.housekeeping.tick()
        await control.automation.reconcile_sweep()
        await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, at=clock()), "")
    assert len(await sent(engine, meter.meter_id)) == 1
    assert [(r.kind, r.state, r.attempt) for r in await command_rows(engine, meter.meter_id)] == [("trip", "failed", 1)]
    async with engine.connect() as conn:
        left = await conn.execute(text("SELECT * FROM control.deferrals WHERE meter_id = :m"), {"m": meter.meter_id})
        assert left.all() == []
        shadow = (
            await conn.execute(text("SELECT * FROM control.shadows WHERE meter_id = :m"), {"m": meter.meter_id})
        ).one()
    assert (shadow.desired_supply, shadow.reported_supply) == ("closed", "closed")  # the intent was dropped


async def test_rejected_commands_of_a_batch_and_a_one_off_schedule_are_not_retried(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(
        engine, clock, result_timeout_seconds=10, retry_initial_seconds=1, reconcile_interval_seconds=1
    )
    refused, tripped, scheduled = electricity(), electricity(), electricity()
    for meter in (refused, tripped):
        await control.automation.on_device_state(device_state(meter.meter_id, RelayState.CLOSED, at=clock()), "")
    await control.scheduler.create(
        ScheduleSpec(
            ids("limit"),
            CommandKind.PARAMETER_WRITE,
            meters=(scheduled.meter_id,),
            parameters={"name": "alarm_money_1", "value": "10.005"},
            run_at=clock.now + timedelta(minutes=1),
        ),
        "tester",
    )
    clock.advance(minutes=1, seconds=1)
    await control.housekeeping.tick()  # the schedule runs
    batch_id, _ = await control.automation.operate(
        [refused.meter_id, tripped.meter_id], OperatorRequest(CommandKind.TRIP, "maintenance", "tester")
    )
    (bad,) = await sent(engine, refused.meter_id)
    (good,) = await sent(engine, tripped.meter_id)
    (write,) = await sent(engine, scheduled.meter_id)
    await control.ledger.on_result(result(bad, CommandStatus.REJECTED, detail="password must be at most 6"), "")
    await control.ledger.on_result(result(good, CommandStatus.CONFIRMED, relay=RelayState.OPEN), "")
    await control.ledger.on_result(result(write, CommandStatus.REJECTED, detail="does not fit alarm_money_1"), "")
    for _ in range(5):
        clock.advance(seconds=30)
        await control.housekeeping.tick()
        await control.automation.reconcile_sweep()
    for meter, state in ((refused, "failed"), (tripped, "confirmed"), (scheduled, "failed")):
        assert len(await sent(engine, meter.meter_id)) == 1, meter
        assert [(r.state, r.attempt) for r in await command_rows(engine, meter.meter_id)] == [(state, 1)], meter
    (row,) = await command_rows(engine, refused.meter_id)
    assert row.batch_id == batch_id
    assert row.detail.startswith("rejected")


async def test_cancel_stops_retries_and_keeps_the_meter_where_it_is(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock, result_timeout_seconds=10)
    meter = electricity()
    _, (outcome,) = await control.automation.operate([meter.meter_id], OperatorRequest(CommandKind.TRIP, "t", "tester"))
    assert outcome.command_id is not None
    cancelled = await control.ledger.cancel(outcome.command_id, "wrong meter", "operator-7")
    assert cancelled["state"] == "cancelled"
    assert cancelled["events"][-1]["actor"] == "operator-7"
    clock.advance(minutes=5)
    await control.housekeeping.tick()
    await control.automation.reconcile([meter.meter_id], trigger="test")
    assert len(await sent(engine, meter.meter_id)) == 1


# --- shadow and reconcile -------------------------------------------------------------------------------------------


async def test_reconcile_after_a_collector_restart_re_issues_the_desired_state(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock)
    account, meter, gateway = ids("acc"), electricity(), ids("gw")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    (trip,) = await sent(engine, meter.meter_id)
    await control.ledger.on_result(result(trip, CommandStatus.CONFIRMED, relay=RelayState.OPEN, at=clock()), "")

    def state(online: bool, relay: RelayState | None, at: datetime) -> DeviceState:
        return DeviceState(
            source="collector-test",
            meter_id=meter.meter_id,
            gateway_id=gateway,
            online=online,
            relay=relay,
            occurred_at=at,
        )

    # The collector restarts; meanwhile the tenant closed the relay by hand. The meter comes back online reporting it.
    clock.advance(minutes=10)
    await control.automation.on_device_state(state(False, None, clock()), "")
    stale = state(True, RelayState.CLOSED, clock() - timedelta(minutes=20))
    await control.automation.on_device_state(stale, "")  # an older report never overwrites a newer one
    assert len(await sent(engine, meter.meter_id)) == 1
    await control.automation.on_device_state(state(True, RelayState.CLOSED, clock()), "")
    first, again = await sent(engine, meter.meter_id)
    assert again.kind is CommandKind.TRIP
    assert again.origin.value == "reconcile"
    assert again.command_id != first.command_id
    # While that is in flight, another online edge (the gateway) re-issues nothing.
    await control.automation.on_gateway_status(
        GatewayStatus(source="collector-test", gateway_id=gateway, online=True, meters=1), ""
    )
    assert len(await sent(engine, meter.meter_id)) == 2
    rows = await command_rows(engine, meter.meter_id)
    assert rows[0].shadow_version == rows[1].shadow_version  # same intent, re-issued


async def test_a_stale_confirmation_never_overwrites_newer_intent(engine: AsyncEngine) -> None:
    control = make_control(engine, Clock(WEDNESDAY_NOON))
    account, meter = ids("acc"), electricity()
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.RESTORED, 2), "")
    trip, close = await sent(engine, meter.meter_id)
    await control.ledger.on_result(result(close, CommandStatus.CONFIRMED, relay=RelayState.CLOSED), "")
    await control.ledger.on_result(result(trip, CommandStatus.CONFIRMED, relay=RelayState.OPEN, at=WEDNESDAY_NOON), "")
    assert (await control.ledger.command(trip.command_id))["state"] == "cancelled"  # superseded stays superseded
    async with engine.connect() as conn:
        shadow = (
            await conn.execute(text("SELECT * FROM control.shadows WHERE meter_id = :m"), {"m": meter.meter_id})
        ).one()
    assert (shadow.desired_supply, shadow.reported_supply, shadow.version) == ("closed", "closed", 2)


async def test_a_restart_mid_command_loses_nothing_and_duplicates_nothing(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    account, meter = ids("acc"), electricity()
    exhausted = event(account, (meter,), BalanceEventKind.EXHAUSTED, 1)
    before = make_control(engine, clock, result_timeout_seconds=30)
    await before.automation.on_balance(exhausted, "")
    del before  # the process dies with the trip sent, unanswered
    after = make_control(engine, clock, result_timeout_seconds=30)
    await after.automation.on_balance(exhausted, "")  # the broker redelivers the unacknowledged event
    await after.housekeeping.tick()
    (request,) = await sent(engine, meter.meter_id)
    await after.ledger.on_result(result(request, CommandStatus.CONFIRMED, relay=RelayState.OPEN), "")
    clock.advance(minutes=2)
    await after.housekeeping.tick()
    rows = await command_rows(engine, meter.meter_id)
    assert [(r.kind, r.state, r.attempt) for r in rows] == [("trip", "confirmed", 1)]
    assert len(await sent(engine, meter.meter_id)) == 1


# --- operator features ----------------------------------------------------------------------------------------------


async def test_batch_preview_lists_blocked_meters_and_writes_nothing(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 23, 30, tzinfo=SHANGHAI))
    control = make_control(engine, clock)
    building, kept, plain = ids("bld"), electricity(), electricity()
    kept_account = ids("acc")
    await control.automation.on_balance(event(kept_account, (kept,), BalanceEventKind.CHANGED, 1), "")
    async with engine.begin() as conn:
        await control.store.put_building(conn, building, None, [kept.meter_id, plain.meter_id], "tester")
        await control.store.set_keep_power(conn, "household", kept_account, KeepPowerReason.ELDERLY, "", "tester")
    request = OperatorRequest(CommandKind.TRIP, "maintenance", "tester")
    _, preview = await control.automation.operate([kept.meter_id, plain.meter_id], request, preview=True)
    by_meter = {o.meter_id: o for o in preview}
    assert by_meter[kept.meter_id].outcome is Outcome.BLOCKED
    assert by_meter[plain.meter_id].outcome is Outcome.BLOCKED  # night window
    assert "night" in by_meter[plain.meter_id].detail
    override = OperatorRequest(CommandKind.TRIP, "maintenance", "tester", override_windows=True)
    _, preview = await control.automation.operate([kept.meter_id, plain.meter_id], override, preview=True)
    assert {o.meter_id: o.outcome for o in preview} == {kept.meter_id: Outcome.BLOCKED, plain.meter_id: Outcome.ISSUE}
    assert await sent(engine, plain.meter_id) == []
    batch_id, done = await control.automation.operate([kept.meter_id, plain.meter_id], override)
    assert [o.outcome for o in done] == [Outcome.BLOCKED, Outcome.ISSUE] or [o.outcome for o in done] == [
        Outcome.ISSUE,
        Outcome.BLOCKED,
    ]
    (row,) = await command_rows(engine, plain.meter_id)
    assert row.batch_id == batch_id
    assert "overrides night" in row.reason


async def test_a_nightly_schedule_runs_once_per_occurrence_across_restarts(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 20, 0, tzinfo=SHANGHAI))
    control = make_control(engine, clock)
    building, meters = ids("bld"), [electricity().meter_id, electricity().meter_id]
    async with engine.begin() as conn:
        await control.store.put_building(conn, building, None, meters, "tester")
    await control.scheduler.create(
        ScheduleSpec(
            ids("limit"),
            CommandKind.PARAMETER_WRITE,
            building_id=building,
            parameters={"load_limit_kw": "1.5"},
            at_local=time(23, 0),
        ),
        "tester",
    )
    await control.housekeeping.tick()
    assert await sent(engine, meters[0]) == []
    clock.now = datetime(2026, 11, 25, 23, 0, 5, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    restarted = make_control(engine, clock)
    await restarted.housekeeping.tick()
    for meter_id in meters:
        (request,) = await sent(engine, meter_id)
        assert request.kind is CommandKind.PARAMETER_WRITE
        assert request.parameters == {"load_limit_kw": "1.5"}
        assert request.origin.value == "schedule"
    clock.advance(days=1)
    await restarted.housekeeping.tick()
    assert len(await sent(engine, meters[0])) == 2


async def test_operator_commands_follow_the_meters_utility_and_client_ids_are_idempotent(engine: AsyncEngine) -> None:
    control = make_control(engine, Clock(WEDNESDAY_NOON), prepaid_water=True)
    water = MeterRef(meter_id=ids("W"), utility=Utility.WATER)
    await control.automation.on_balance(event(ids("acc"), (water,), BalanceEventKind.CHANGED, 1), "")
    _, (wrong,) = await control.automation.operate([water.meter_id], OperatorRequest(CommandKind.TRIP, "x", "tester"))
    assert wrong.outcome is Outcome.BLOCKED
    command_id = uuid.uuid4()
    request = OperatorRequest(CommandKind.VALVE_CLOSE, "leak", "tester", command_id=command_id)
    _, (first,) = await control.automation.operate([water.meter_id], request)
    _, (again,) = await control.automation.operate([water.meter_id], request)
    assert first.command_id == again.command_id == command_id
    assert [c.kind for c in await sent(engine, water.meter_id)] == [CommandKind.VALVE_CLOSE]
    with pytest.raises(ControlError):
        await control.automation.operate(
            [water.meter_id], OperatorRequest(CommandKind.VALVE_OPEN, "x", "tester", command_id=command_id)
        )


async def test_an_estate_restoring_with_close_allowed_leaves_closing_to_the_tenant(engine: AsyncEngine) -> None:
    clock = Clock(WEDNESDAY_NOON)
    control = make_control(engine, clock)
    estate, meter, account = ids("est"), electricity(), ids("acc")
    async with engine.begin() as conn:
        await control.store.put_building(conn, ids("bld"), estate, [meter.meter_id], "tester")
        allowed = EstateSettings(time(22), time(7), True, True, CommandKind.CLOSE_ALLOWED, False)
        await control.store.put_estate_policy(conn, estate, allowed, "tester")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.EXHAUSTED, 1), "")
    await control.automation.on_balance(event(account, (meter,), BalanceEventKind.RESTORED, 2), "")
    _, close = await sent(engine, meter.meter_id)
    assert close.kind is CommandKind.CLOSE_ALLOWED
    # The meter accepts; its relay stays open until the tenant presses the button: nothing to reconcile.
    await control.ledger.on_result(result(close, CommandStatus.CONFIRMED, relay=RelayState.OPEN), "")
    clock.advance(minutes=30)
    await control.automation.reconcile_sweep()
    assert len(await sent(engine, meter.meter_id)) == 2


async def test_a_schedule_missed_beyond_the_grace_is_skipped_not_run_late(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 5, 0, tzinfo=SHANGHAI))
    control = make_control(engine, clock, schedule_grace_seconds=600)
    meter_id = electricity().meter_id
    await control.scheduler.create(
        ScheduleSpec(
            ids("lift"),
            CommandKind.PARAMETER_WRITE,
            meters=(meter_id,),
            parameters={"load_limit_kw": "0"},
            at_local=time(6),
        ),
        "tester",
    )
    clock.now = datetime(2026, 11, 25, 6, 30, tzinfo=SHANGHAI)  # control was down from 05:59 to 06:30
    await control.housekeeping.tick()
    assert await sent(engine, meter_id) == []
    clock.now = datetime(2026, 11, 26, 6, 0, 1, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    assert len(await sent(engine, meter_id)) == 1


async def test_a_one_off_schedule_runs_once_with_its_command_id(engine: AsyncEngine) -> None:
    clock = Clock(datetime(2026, 11, 25, 1, 0, tzinfo=SHANGHAI))
    control = make_control(engine, clock)
    meter_id, command_id = electricity().meter_id, uuid.uuid4()
    spec = ScheduleSpec(
        ids("sync"),
        CommandKind.TIME_SYNC,
        meters=(meter_id,),
        run_at=datetime(2026, 11, 25, 2, 0, tzinfo=SHANGHAI),
        command_id=command_id,
        reason="月度校时",
    )
    first = await control.scheduler.create(spec, "tester")
    assert (await control.scheduler.create(spec, "tester"))["schedule_id"] == first["schedule_id"]
    await control.housekeeping.tick()
    assert await sent(engine, meter_id) == []
    clock.now = datetime(2026, 11, 25, 2, 0, 1, tzinfo=SHANGHAI)
    await control.housekeeping.tick()
    clock.advance(days=1)
    await control.housekeeping.tick()
    (request,) = await sent(engine, meter_id)
    assert (request.command_id, request.kind) == (command_id, CommandKind.TIME_SYNC)
    assert (await control.scheduler.get(first["schedule_id"]))["enabled"] is False


async def test_lock_all_creates_missing_shadows_and_keeps_existing_facts(engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    old, new = f"lock-old-{tag}", f"lock-new-{tag}"
    async with engine.begin() as conn:
        await shadows.lock(conn, old, utility=Utility.WATER, account_id=f"acct-{tag}")
        await shadows.set_desired(conn, old, RelayState.OPEN)
    async with engine.begin() as conn:
        assert await shadows.lock_all(conn, []) == {}
        rows = await shadows.lock_all(conn, [new, old, new], assumed=Utility.ELECTRICITY)
    assert list(rows) == sorted({old, new})  # duplicates collapse; meter order
    assert (rows[old].utility, rows[old].account_id, rows[old].desired) == (
        Utility.WATER,
        f"acct-{tag}",
        RelayState.OPEN,
    )
    assert rows[old].version == 1  # locking is not an intent: the version stays
    assert (rows[new].utility, rows[new].account_id, rows[new].desired) == (Utility.ELECTRICITY, None, None)
