"""The evaluation path against real PostgreSQL: inputs → detectors → persisted state → alarms, with `now` driven
by the test. Root-cause suppression, a leak the same night, restarts mid-condition, scoped rules, escalation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.adapters.container import Components
from shuidian_alarm.app import compose
from shuidian_alarm.domain.alarms import AlarmQuery
from shuidian_alarm.domain.detectors.balance import BALANCE_MISMATCH
from shuidian_alarm.domain.detectors.connectivity import GATEWAY_OFFLINE, METER_OFFLINE
from shuidian_alarm.domain.detectors.spike import USAGE_SPIKE, SpikeRule
from shuidian_alarm.domain.detectors.thresholds import Measure, ThresholdRule
from shuidian_alarm.domain.detectors.water import WATER_LEAK
from shuidian_alarm.domain.scopes import RuleScope, ScopeLevel
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandOrigin,
    CommandState,
    CommandUpdate,
    DeadLetterParked,
    DeviceState,
    GatewayStatus,
    MeterRef,
    Reading,
    ReadingBatch,
    Utility,
)

pytestmark = pytest.mark.integration
SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = timedelta(minutes=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_alarm", "alarm")
    yield engine
    await engine.dispose()


Build = Callable[[Clock], Components]


@pytest_asyncio.fixture(loop_scope="session")
async def build(engine: AsyncEngine) -> AsyncIterator[Build]:
    """A fresh service instance on the shared database (a new instance is also what a restart looks like)."""
    mqtt = MqttLink("mqtt://127.0.0.1:1", service="alarm", instance="test")
    async with httpx.AsyncClient() as http:

        def make(clock: Clock) -> Components:
            settings = AlarmSettings(environment="test", escalate_after_seconds=1800, max_escalations=2)
            return compose(settings, engine, Outbox(engine, mqtt, "alarm"), mqtt, http, clock=clock)

        yield make


def uid() -> str:
    return uuid.uuid4().hex[:8]


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def batch(gateway: str, *readings: Reading) -> ReadingBatch:
    return ReadingBatch(source="collector-test", gateway_id=gateway, readings=readings)


def volts(meter: str, at: datetime, value: str) -> Reading:
    return Reading.create(meter, Utility.ELECTRICITY, at, registers={"voltage_a": Decimal(value)})


async def alarms_of(c: Components, **filters: Any) -> list[dict[str, Any]]:
    found, _ = await c.alarms.query(AlarmQuery(limit=1000, **filters))
    return found


async def open_alarms(c: Components, sources: set[str]) -> list[tuple[str, str]]:
    found = await alarms_of(c)
    return sorted(
        (a["source_id"], a["alarm_type"]) for a in found if a["source_id"] in sources and a["state"] != "cleared"
    )


# --- root cause: a gateway and its 30 meters ------------------------------------------------------------


async def test_a_gateway_with_30_meters_going_offline_yields_exactly_one_alarm(build: Build) -> None:
    t0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    clock = Clock(t0 - timedelta(hours=1))
    c = build(clock)
    gw, estate = f"gw-{uid()}", f"estate-{uid()}"
    meters = [f"m-{gw}-{i:02d}" for i in range(30)]
    await c.evaluator.put_targets(
        [Target(meter_id=m, gateway_id=gw, estate=estate, building="B1", room=f"{i:03d}") for i, m in enumerate(meters)]
    )
    await c.evaluator.on_gateway_status(
        GatewayStatus(source="c", gateway_id=gw, online=True, meters=30, occurred_at=clock.now), ""
    )
    for m in meters:
        await c.evaluator.on_device_state(
            DeviceState(source="c", meter_id=m, gateway_id=gw, online=True, occurred_at=clock.now), ""
        )
    # The gateway loses power: some meters are reported silent before the gateway edge, the rest after.
    clock.now = t0
    for i, m in enumerate(meters):
        at = t0 + timedelta(seconds=i * 2 - 30)
        await c.evaluator.on_device_state(
            DeviceState(source="c", meter_id=m, gateway_id=gw, online=False, occurred_at=at, reason="timeout"), ""
        )
        if i == 15:
            await c.evaluator.on_gateway_status(
                GatewayStatus(source="c", gateway_id=gw, online=False, meters=30, occurred_at=t0), ""
            )
    for minutes in (1, 4, 6, 7, 16, 30, 90, 180):
        clock.now = t0 + minutes * MINUTE
        await c.evaluator.tick(clock.now)
    sources = {gw, *meters}
    assert await open_alarms(c, sources) == [(gw, GATEWAY_OFFLINE)]
    (gateway_alarm,) = await alarms_of(c, source_id=gw)
    assert (gateway_alarm["estate"], gateway_alarm["details"]["meters"]) == (estate, "30")
    orders = await c.work_orders.query(
        estate=estate, building=None, device_id=None, fault_type=None, status=None, since=None, until=None, limit=10
    )
    assert [(o["device_id"], o["fault_type"]) for o in orders] == [(gw, GATEWAY_OFFLINE)]

    # Power is back; every meter answers again except one that really broke.
    back = t0 + timedelta(hours=4)
    clock.now = back
    await c.evaluator.on_gateway_status(
        GatewayStatus(source="c", gateway_id=gw, online=True, meters=30, occurred_at=back), ""
    )
    for m in meters[:7] + meters[8:]:
        await c.evaluator.on_device_state(
            DeviceState(source="c", meter_id=m, gateway_id=gw, online=True, occurred_at=back + MINUTE), ""
        )
    for minutes in (1, 3, 9, 11, 30):
        clock.now = back + minutes * MINUTE
        await c.evaluator.tick(clock.now)
    assert await open_alarms(c, sources) == [(meters[7], METER_OFFLINE)]
    assert [a["state"] for a in await alarms_of(c, source_id=gw)] == ["cleared"]


# --- a leak the night it starts --------------------------------------------------------------------------


def night_readings(meter: str, evening: datetime, litres_per_hour: Callable[[datetime], Decimal]) -> list[Reading]:
    """A water meter read every 15 minutes for 12 hours from `evening`, its register integrating the flow."""
    out, volume, at = [], Decimal("100"), evening
    for _ in range(12 * 4 + 1):
        out.append(Reading.create(meter, Utility.WATER, at, registers={"water_volume_total": volume}))
        volume += litres_per_hour(at) / 1000 / 4
        at += 15 * MINUTE
    return out


async def test_continuous_night_flow_is_detected_the_same_night_and_a_quiet_night_is_not(build: Build) -> None:
    evening = local(2026, 3, 3, 19)
    clock = Clock(evening)
    c = build(clock)
    leaking, quiet, gw = f"w-{uid()}", f"w-{uid()}", f"gw-{uid()}"

    def hour(at: datetime) -> int:
        return at.astimezone(SHANGHAI).hour

    def household(at: datetime) -> Decimal:
        return Decimal(60) if hour(at) in (19, 20, 6) else Decimal(0)  # showers in the evening and morning

    def dripping(at: datetime) -> Decimal:
        return household(at) + (Decimal(0) if hour(at) in (21,) else Decimal(12))  # a toilet cistern from 22:00

    readings = sorted(
        night_readings(leaking, evening, dripping) + night_readings(quiet, evening, household),
        key=lambda r: r.sampled_at,
    )
    raised_at: datetime | None = None
    for i in range(0, len(readings), 2):  # one batch per poll cycle, as the collector sends them
        clock.now = readings[i].sampled_at
        await c.evaluator.on_readings(batch(gw, *readings[i : i + 2]), "")
        if raised_at is None and await open_alarms(c, {leaking}):
            raised_at = clock.now
    assert await open_alarms(c, {leaking, quiet}) == [(leaking, WATER_LEAK)]
    assert raised_at is not None
    assert raised_at <= local(2026, 3, 4, 5, 15), "the leak must be reported before the night is over"


async def test_a_usage_spike_against_the_meters_own_baseline_from_readings(build: Build) -> None:
    monday = local(2026, 3, 9)
    clock = Clock(monday)
    c = build(clock)
    meter, gw = f"m-{uid()}", f"gw-{uid()}"
    await c.rulebook.put(RuleScope(level=ScopeLevel.METER, key=meter), USAGE_SPIKE, True, SpikeRule(warmup_samples=2))
    spike_hour = local(2026, 3, 12, 14)  # Thursday afternoon: 6 kWh where the meter usually uses 0.5
    register, at = Decimal(1000), monday
    raised_at = None
    while at <= spike_hour + timedelta(hours=2):
        clock.now = at
        reading = Reading.create(meter, Utility.ELECTRICITY, at, registers={"energy_active_import_total": register})
        await c.evaluator.on_readings(batch(gw, reading), "")
        if raised_at is None and await open_alarms(c, {meter}):
            raised_at = at
        register += Decimal(6) if at == spike_hour else Decimal("0.5")
        at += timedelta(hours=1)
    assert raised_at == spike_hour + timedelta(hours=1)  # as soon as the hour is over
    (alarm,) = await alarms_of(c, source_id=meter)
    assert (alarm["alarm_type"], alarm["details"]["quantity"], alarm["details"]["baseline"]) == (
        USAGE_SPIKE,
        "6",
        "0.5",
    )


# --- durations survive restarts, and hostile delivery does not fool them ---------------------------------


async def test_a_restart_in_the_middle_of_a_duration_condition_keeps_its_progress(build: Build) -> None:
    t0 = datetime(2026, 3, 5, 2, 0, tzinfo=UTC)
    meter, gw = f"m-{uid()}", f"gw-{uid()}"
    first_clock = Clock(t0)
    first = build(first_clock)
    for minute in range(3):  # minutes 0, 1, 2 over the limit …
        first_clock.now = t0 + minute * MINUTE
        await first.evaluator.on_readings(batch(gw, volts(meter, first_clock.now, "240")), "")
    # … then the service restarts: a new instance, nothing cached, the state comes from the database.
    clock = Clock(t0 + 3 * MINUTE)
    second = build(clock)
    await second.evaluator.on_readings(batch(gw, volts(meter, t0 + 3 * MINUTE, "240")), "")
    # A duplicate and an older reading arriving late must neither raise early nor reset the run.
    await second.evaluator.on_readings(batch(gw, volts(meter, t0 + 3 * MINUTE, "240")), "")
    await second.evaluator.on_readings(batch(gw, volts(meter, t0 + 90 * timedelta(seconds=1), "220")), "")
    clock.now = t0 + 4 * MINUTE
    await second.evaluator.on_readings(batch(gw, volts(meter, clock.now, "240")), "")
    assert await open_alarms(second, {meter}) == []
    clock.now = t0 + 5 * MINUTE
    await second.evaluator.on_readings(batch(gw, volts(meter, clock.now, "240")), "")
    assert await open_alarms(second, {meter}) == [(meter, "over_voltage")]
    # The first instance, still running (a second replica), sees the newer state and does not raise again.
    first_clock.now = t0 + 6 * MINUTE
    await first.evaluator.on_readings(batch(gw, volts(meter, first_clock.now, "241")), "")
    (alarm,) = await alarms_of(second, source_id=meter)
    assert alarm["occurrences"] == 1


async def test_flapping_around_the_limit_never_raises(build: Build) -> None:
    t0 = datetime(2026, 3, 5, 4, 0, tzinfo=UTC)
    clock = Clock(t0)
    c = build(clock)
    meter, gw = f"m-{uid()}", f"gw-{uid()}"
    for minute in range(40):
        clock.now = t0 + minute * MINUTE
        await c.evaluator.on_readings(batch(gw, volts(meter, clock.now, "236" if minute % 2 else "234")), "")
    assert await open_alarms(c, {meter}) == []


# --- rules per scope ------------------------------------------------------------------------------------


async def test_the_most_specific_configured_rule_wins(build: Build) -> None:
    t0 = datetime(2026, 3, 6, 2, 0, tzinfo=UTC)
    clock = Clock(t0)
    c = build(clock)
    estate, gw = f"estate-{uid()}", f"gw-{uid()}"
    lenient, strict, elsewhere = f"m-{uid()}", f"m-{uid()}", f"m-{uid()}"
    await c.evaluator.put_targets(
        [
            Target(meter_id=lenient, estate=estate, building="B1"),
            Target(meter_id=strict, estate=estate, building="B1"),
            Target(meter_id=elsewhere, estate=f"other-{uid()}"),
        ]
    )
    over = Measure.OVER_VOLTAGE
    await c.rulebook.put(
        RuleScope(level=ScopeLevel.ESTATE, key=estate),
        over.value,
        True,
        ThresholdRule(measure=over, limit=Decimal(250), margin=Decimal(2)),
    )
    await c.rulebook.put(
        RuleScope(level=ScopeLevel.METER, key=strict),
        over.value,
        True,
        ThresholdRule(measure=over, limit=Decimal(230), margin=Decimal(2), raise_after=timedelta(0)),
    )
    for minute in range(7):
        clock.now = t0 + minute * MINUTE
        await c.evaluator.on_readings(
            batch(
                gw,
                volts(lenient, clock.now, "240"),
                volts(strict, clock.now, "235"),
                volts(elsewhere, clock.now, "240"),
            ),
            "",
        )
    assert await open_alarms(c, {lenient, strict, elsewhere}) == sorted(
        [(elsewhere, "over_voltage"), (strict, "over_voltage")]
    )
    (strict_alarm,) = await alarms_of(c, source_id=strict)
    assert strict_alarm["raised_at"] is not None
    assert strict_alarm["details"]["limit"] == "230"


async def test_a_rule_edited_between_readings_applies_to_the_next_one(build: Build) -> None:
    # Each reading's rules are planned once per meter and register set: an edit must drop the plan at once.
    t0 = datetime(2026, 3, 6, 5, 0, tzinfo=UTC)
    clock = Clock(t0)
    c = build(clock)
    meter, gw = f"m-{uid()}", f"gw-{uid()}"
    await c.evaluator.on_readings(batch(gw, volts(meter, t0, "232")), "")
    assert await open_alarms(c, {meter}) == []
    over = Measure.OVER_VOLTAGE
    strict = ThresholdRule(measure=over, limit=Decimal(230), raise_after=timedelta(0))
    await c.rulebook.put(RuleScope(level=ScopeLevel.METER, key=meter), over.value, True, strict)
    clock.now = t0 + MINUTE
    await c.evaluator.on_readings(batch(gw, volts(meter, clock.now, "232")), "")
    assert await open_alarms(c, {meter}) == [(meter, "over_voltage")]


# --- business alarms ------------------------------------------------------------------------------------


def balance_event(
    account: str,
    meter: str,
    kind: BalanceEventKind,
    level: BalanceLevel,
    seq: int,
    amount: str,
    at: datetime | None = None,
) -> BalanceEvent:
    return BalanceEvent(
        source="billing-test",
        occurred_at=at or datetime.now(UTC),
        account_id=account,
        kind=kind,
        level=level,
        balance=Decimal(amount),
        sequence=seq,
        meters=(MeterRef(meter_id=meter, utility=Utility.ELECTRICITY),),
    )


async def test_the_meters_own_balance_disagreeing_with_the_server_raises_after_the_grace(build: Build) -> None:
    t0 = datetime(2026, 3, 7, 1, 0, tzinfo=UTC)
    clock = Clock(t0)
    c = build(clock)
    account, meter, gw = f"acc-{uid()}", f"m-{uid()}", f"gw-{uid()}"
    await c.evaluator.put_targets([Target(meter_id=meter, account_id=account, tenant_id=f"t-{uid()}")])
    changed = BalanceEventKind.CHANGED
    await c.evaluator.on_balance(balance_event(account, meter, changed, BalanceLevel.OK, 1, "10.00", t0), "")
    for minutes in (0, 60, 121):
        clock.now = t0 + minutes * MINUTE
        reading = Reading.create(meter, Utility.ELECTRICITY, clock.now, registers={"balance_money": Decimal("50.00")})
        await c.evaluator.on_readings(batch(gw, reading), "")
    assert await open_alarms(c, {meter}) == [(meter, BALANCE_MISMATCH)]
    # An older balance event arriving late is ignored; the meter catching up clears it.
    await c.evaluator.on_balance(balance_event(account, meter, changed, BalanceLevel.OK, 0, "50.00", clock.now), "")
    assert await open_alarms(c, {meter}) == [(meter, BALANCE_MISMATCH)]
    clock.now += MINUTE
    reading = Reading.create(meter, Utility.ELECTRICITY, clock.now, registers={"balance_money": Decimal("10.00")})
    await c.evaluator.on_readings(batch(gw, reading), "")
    assert await open_alarms(c, {meter}) == []


async def test_a_command_that_finally_failed_alarms_and_a_confirmed_one_clears(build: Build) -> None:
    c = build(Clock(datetime.now(UTC)))
    meter = f"m-{uid()}"

    def update(state: CommandState) -> CommandUpdate:
        return CommandUpdate(
            source="control-test",
            command_id=uuid.uuid4(),
            meter_id=meter,
            kind=CommandKind.TRIP,
            state=state,
            origin=CommandOrigin.BILLING,
            attempt=3,
            detail="no answer",
        )

    await c.evaluator.on_command_update(update(CommandState.SENT), "")
    assert await open_alarms(c, {meter}) == []
    await c.evaluator.on_command_update(update(CommandState.EXPIRED), "")
    assert await open_alarms(c, {meter}) == [(meter, "command_failed")]
    await c.evaluator.on_command_update(update(CommandState.CONFIRMED), "")
    assert await open_alarms(c, {meter}) == []


async def test_a_parked_message_raises_one_alarm_per_service_for_the_operators(build: Build) -> None:
    c = build(Clock(datetime.now(UTC)))
    service = f"svc-{uid()}"  # the source of the alarm is the service whose message was parked

    def parked(letter_id: int) -> DeadLetterParked:
        return DeadLetterParked(
            source=f"{service}-t",
            service=service,
            instance="t",
            letter_id=letter_id,
            topic="shuidian/v1/readings/gw-1",
            reason="handler_failed",
            error="ValueError: a bug",
        )

    await c.evaluator.on_dead_letter(parked(1), "")
    await c.evaluator.on_dead_letter(parked(2), "")
    assert await open_alarms(c, {service}) == [(service, "message_dead_letter")]
    [alarm] = [a for a in await alarms_of(c) if a["source_id"] == service]
    assert alarm["severity"] == "major"
    assert "死信" in alarm["message_zh"]


# --- lifecycle: escalation, history -----------------------------------------------------------------------


async def test_unacknowledged_alarms_escalate_step_by_step_and_acknowledged_ones_do_not(
    build: Build, engine: AsyncEngine
) -> None:
    c = build(Clock(datetime.now(UTC)))
    ignored, handled, estate = f"acc-{uid()}", f"acc-{uid()}", f"estate-{uid()}"
    await c.evaluator.put_targets([Target(meter_id=f"m-{a}", account_id=a, estate=estate) for a in (ignored, handled)])
    duty = await c.notifier.subscribe(
        {
            "audience": "staff",
            "role": "estate_manager",
            "estate": estate,
            "tenant_id": None,
            "channel": "email",
            "address": "duty@example.com",
            "secret": None,
            "language": "zh-CN",
            "min_severity": "warning",
            "alarm_types": None,
            "quiet_start": None,
            "quiet_end": None,
        }
    )
    for account in (ignored, handled):
        await c.evaluator.on_balance(
            balance_event(account, f"m-{account}", BalanceEventKind.LOW_1, BalanceLevel.LOW_1, 1, "15.00"), ""
        )
    (to_handle,) = await alarms_of(c, source_id=handled)
    await c.alarms.acknowledge(to_handle["alarm_id"], "manager-1")
    async with engine.connect() as conn:
        raised = (
            await conn.execute(text("SELECT raised_at FROM alarm.alarms WHERE source_id = :s"), {"s": ignored})
        ).scalar_one()
    seen = []
    for minutes in (10, 31, 45, 62, 300):
        await c.alarms.escalate(raised + minutes * MINUTE)
        (alarm,) = await alarms_of(c, source_id=ignored)
        seen.append((minutes, alarm["severity"], alarm["escalation_level"]))
    assert seen == [(10, "warning", 0), (31, "major", 1), (45, "major", 1), (62, "critical", 2), (300, "critical", 2)]
    (still,) = await alarms_of(c, source_id=handled)
    assert (still["severity"], still["escalation_level"]) == ("warning", 0)
    # The duty manager hears of each alarm when raised and of every escalation step, each in Chinese.
    log = await c.notifier.log(None, duty["subscription_id"], None, 100)
    events = sorted((n["alarm_id"] == alarm["alarm_id"], n["event"], n["subject"]) for n in log)
    assert [(mine, event) for mine, event, _ in events] == [
        (False, "raised"),
        (True, "escalated"),
        (True, "escalated"),
        (True, "raised"),
    ]
    assert any("告警升级 · 紧急" in subject for _, _, subject in events)


async def test_history_by_estate_pages_through_every_alarm_once(build: Build) -> None:
    c = build(Clock(datetime.now(UTC)))
    estate = f"estate-{uid()}"
    accounts = [f"acc-{uid()}" for _ in range(5)]
    await c.evaluator.put_targets(
        [
            Target(meter_id=f"m-{a}", account_id=a, estate=estate, building="B2", room=str(i))
            for i, a in enumerate(accounts)
        ]
    )
    for account in accounts:
        await c.evaluator.on_balance(
            balance_event(account, f"m-{account}", BalanceEventKind.EXHAUSTED, BalanceLevel.EXHAUSTED, 1, "0.00"), ""
        )
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await c.alarms.query(AlarmQuery(estate=estate, building="B2", limit=2, cursor=cursor))
        seen += [a["source_id"] for a in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(accounts)
    assert (await c.alarms.query(AlarmQuery(estate=estate, alarm_type="balance_low")))[0] == []
