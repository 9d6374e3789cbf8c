"""The inputs that complete the rules, through the real broker into the deployed service: the collector's
`PollStats` (communication errors), billing's retained `RoomOccupancy` (consumption in a vacant room),
readings carrying the leakage flag, residual current and clock offset, and insights' `LineLossExceeded`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_alarm.app import create_app
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.detectors.comm_errors import CommErrorState
from shuidian_alarm.domain.events import LINE_LOSS, on_line_loss
from shuidian_alarm.domain.notify.templates import TYPE_NAMES
from shuidian_alarm.domain.states import decode_states
from shuidian_alarm.domain.targets import Target
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_kit.db import create_engine
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.messages import (
    CLOCK_OFFSET,
    RESIDUAL_CURRENT,
    AlarmSeverity,
    MeterRef,
    PollCounts,
    PollStats,
    Reading,
    ReadingBatch,
    ReadingFlag,
    RoomOccupancy,
    Utility,
)

pytestmark = pytest.mark.integration
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
RUN = uuid.uuid4().hex[:6]  # retained topics outlive the test: names unique to this run


def uid() -> str:
    return uuid.uuid4().hex[:8]


def occupancy(room: str, leased: bool, meters: list[str], at: datetime, since: datetime | None = None) -> RoomOccupancy:
    return RoomOccupancy(
        source="billing-test",
        occurred_at=at,
        room_id=room,
        estate_id="E-inputs",
        leased=leased,
        since=since or at,
        meters=tuple(MeterRef(meter_id=m, utility=Utility.ELECTRICITY) for m in meters),
    )


NOW = datetime.now(UTC)
HOUR_NOW = NOW.replace(minute=0, second=0, microsecond=0)
LONG_VACANT = occupancy(f"R-{RUN}-retained", False, [f"E-{RUN}-retained"], NOW - 2 * HOUR, NOW - timedelta(days=30))


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # Billing published this room's occupancy before the alarm service ever ran: it must come in retained.
    await publish(mqtt_url, (topics.room_occupancy(LONG_VACANT.room_id), LONG_VACANT), retain=True)
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"inputs-{port}",
        http_port=port,
        tick_seconds=0.2,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as cleanup:  # an empty retained payload deletes it
        await cleanup.publish(topics.room_occupancy(LONG_VACANT.room_id), b"", qos=1, retain=True)


async def alarms(api: httpx.AsyncClient, source: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"source_id": source})).json()
    return found


async def open_types(api: httpx.AsyncClient, source: str) -> set[str]:
    return {a["alarm_type"] for a in await alarms(api, source) if a["state"] != "cleared"}


# --- communication errors from PollStats ----------------------------------------------------------------


def stats(gateway: str, start: datetime, counts: dict[str, tuple[int, int]], down: bool = False) -> PollStats:
    return PollStats(
        source="collector-test",
        gateway_id=gateway,
        window_start=start,
        window_end=start + 5 * MINUTE,
        gateway_down=down,
        meters=tuple(PollCounts(meter_id=m, attempts=a, failures=f) for m, (a, f) in counts.items()),
    )


async def windows_counted(db: AsyncEngine, meter: str) -> int:
    async with db.connect() as conn:
        raw = (
            await conn.execute(text("SELECT states FROM alarm.rule_states WHERE source_id = :s"), {"s": meter})
        ).scalar_one_or_none()
    state = None if raw is None else decode_states(raw).get("comm_errors")
    return len(state.counts) if isinstance(state, CommErrorState) else 0


async def test_poll_stats_raise_comm_errors_once_per_window_and_clear_with_hysteresis(
    api: httpx.AsyncClient, mqtt_url: str, db: AsyncEngine
) -> None:
    gw, flaky, dead = f"G-{uid()}", f"E-{uid()}", f"E-{uid()}"
    base = NOW - 50 * MINUTE
    first = stats(gw, base, {flaky: (10, 3), dead: (10, 10)})
    # The same message delivered twice, and the same window re-sent under a new id: counted once.
    await publish(
        mqtt_url,
        (topics.poll_stats(gw), first),
        (topics.poll_stats(gw), first),
        (topics.poll_stats(gw), stats(gw, base, {flaky: (10, 3), dead: (10, 10)})),
    )

    async def raised() -> list[dict[str, Any]] | None:
        return [a for a in await alarms(api, flaky) if a["alarm_type"] == "comm_errors"] or None

    (alarm,) = await eventually(raised, "the comm_errors alarm of the flaky meter")
    assert (alarm["details"]["attempts"], alarm["details"]["failures"], alarm["details"]["rate"]) == ("10", "3", "30.0")
    assert alarm["state"] == "active"
    assert await open_types(api, dead) == set()  # every poll failed: that is the offline rule's alarm, not this one

    # 3 failures of 20 polls, then of 40 (7.5 %): between the rates, so nothing changes; out of order on the way.
    await publish(
        mqtt_url,
        (topics.poll_stats(gw), stats(gw, base + 15 * MINUTE, {flaky: (10, 0)})),
        (topics.poll_stats(gw), stats(gw, base + 5 * MINUTE, {flaky: (10, 0)})),
        (topics.poll_stats(gw), stats(gw, base + 10 * MINUTE, {flaky: (10, 0)})),
        (topics.poll_stats(gw), stats(gw, base + 20 * MINUTE, {flaky: (10, 0)}, down=True)),  # not the meter's fault
    )

    async def counted() -> bool:
        return await windows_counted(db, flaky) == 4

    await eventually(counted, "four windows counted")
    assert await open_types(api, flaky) == {"comm_errors"}
    # 3 of 60 is 5 %: at the clear rate.
    await publish(
        mqtt_url,
        (topics.poll_stats(gw), stats(gw, base + 25 * MINUTE, {flaky: (10, 0)})),
        (topics.poll_stats(gw), stats(gw, base + 30 * MINUTE, {flaky: (10, 0)})),
    )

    async def cleared() -> bool:
        return not await open_types(api, flaky)

    await eventually(cleared, "the comm_errors alarm to clear")
    assert [a["state"] for a in await alarms(api, flaky)] == ["cleared"]


def test_more_failures_than_attempts_never_reach_the_wire() -> None:
    with pytest.raises(ValueError, match="failures cannot exceed attempts"):
        PollCounts(meter_id="E-1", attempts=2, failures=3)
    payload = stats("G-1", NOW, {"E-1": (2, 2)}).model_dump_json().replace('"failures":2', '"failures":3')
    with pytest.raises(ValueError, match="failures cannot exceed attempts"):
        PollStats.model_validate_json(payload)


# --- consumption in a vacant room from RoomOccupancy ----------------------------------------------------


def hourly_readings(meter: str, hours: int, kwh_per_hour: str) -> list[Reading]:
    """Readings on the hour for the last `hours` hours, the register rising steadily."""
    start = HOUR_NOW - hours * HOUR
    return [
        Reading.create(
            meter,
            Utility.ELECTRICITY,
            start + i * HOUR,
            registers={"energy_active_import_total": Decimal(100) + i * Decimal(kwh_per_hour)},
        )
        for i in range(hours + 1)
    ]


def readings(gateway: str, *meters_readings: list[Reading]) -> tuple[str, ReadingBatch]:
    batch = ReadingBatch(
        source="collector-test", gateway_id=gateway, readings=tuple(r for rs in meters_readings for r in rs)
    )
    return topics.readings(gateway), batch


async def taken_in(db: AsyncEngine, room: RoomOccupancy) -> bool:
    async with db.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT message_id FROM alarm.room_occupancy WHERE room_id = :r"), {"r": room.room_id}
            )
        ).scalar_one_or_none()
    return held == room.message_id


async def test_a_retained_vacant_room_with_consumption_raises_vacant_usage_and_a_move_in_clears_it(
    api: httpx.AsyncClient, mqtt_url: str, db: AsyncEngine
) -> None:
    meter = LONG_VACANT.meters[0].meter_id
    await eventually(lambda: taken_in(db, LONG_VACANT), "the retained occupancy to be taken in")
    await publish(mqtt_url, readings(f"G-{uid()}", hourly_readings(meter, 4, "0.8")))

    async def raised() -> list[dict[str, Any]] | None:
        return [a for a in await alarms(api, meter) if a["alarm_type"] == "vacant_usage"] or None

    (alarm,) = await eventually(raised, "the vacant_usage alarm")
    assert (alarm["state"], alarm["details"]["quantity"], alarm["details"]["room_id"]) == (
        "active",
        "0.8",
        LONG_VACANT.room_id,
    )
    move_in = occupancy(LONG_VACANT.room_id, True, [meter], NOW, NOW - 10 * MINUTE)
    await publish(mqtt_url, (topics.room_occupancy(move_in.room_id), move_in))

    async def cleared() -> bool:
        return not await open_types(api, meter)

    await eventually(cleared, "the move-in to clear vacant_usage")


async def test_meters_re_bound_between_rooms_follow_their_new_room_whatever_order_the_rooms_arrive_in(
    api: httpx.AsyncClient, mqtt_url: str, db: AsyncEngine
) -> None:
    vacant, leased = f"R-{uid()}", f"R-{uid()}"
    to_leased, to_vacant = f"E-{uid()}", f"E-{uid()}"
    month_ago, t0 = NOW - timedelta(days=30), NOW - 3 * HOUR
    # Before: `to_leased` supplies the vacant room, `to_vacant` the leased one.
    await publish(
        mqtt_url,
        (topics.room_occupancy(vacant), occupancy(vacant, False, [to_leased], t0, month_ago)),
        (topics.room_occupancy(leased), occupancy(leased, True, [to_vacant], t0, month_ago)),
    )
    # The meters swap rooms. The leased room's news arrives first though it is the older message, then the vacant
    # room's, then a stale copy of the vacant room's first state, which must change nothing.
    later_leased = occupancy(leased, True, [to_leased], t0 + MINUTE, month_ago)
    later_vacant = occupancy(vacant, False, [to_vacant], t0 + 2 * MINUTE, month_ago)
    stale = occupancy(vacant, False, [to_leased], t0 - HOUR, month_ago)
    await publish(
        mqtt_url,
        (topics.room_occupancy(leased), later_leased),
        (topics.room_occupancy(vacant), later_vacant),
        (topics.room_occupancy(vacant), stale),
    )
    await eventually(lambda: taken_in(db, later_vacant), "the swap to be taken in")
    await publish(
        mqtt_url, readings(f"G-{uid()}", hourly_readings(to_leased, 3, "2"), hourly_readings(to_vacant, 3, "2"))
    )

    async def raised() -> set[str] | None:
        return await open_types(api, to_vacant) or None

    assert await eventually(raised, "vacant_usage of the meter moved into the vacant room") == {"vacant_usage"}
    (alarm,) = await alarms(api, to_vacant)
    assert alarm["details"]["room_id"] == vacant
    assert await alarms(api, to_leased) == []  # its hours were judged in the same transaction
    # Unbound from the vacant room altogether: it measures no room's consumption now, so its alarm clears.
    unbound = occupancy(vacant, False, [], t0 + 3 * MINUTE, month_ago)
    await publish(mqtt_url, (topics.room_occupancy(vacant), unbound))

    async def cleared() -> bool:
        return not await open_types(api, to_vacant)

    await eventually(cleared, "the unbinding to clear vacant_usage")


# --- electric leakage and clock drift from readings -----------------------------------------------------


async def test_leakage_flag_residual_current_and_clock_offset_raise_and_clear_from_readings(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    flagged, residual, drifting, healthy, at_rcd_limit = (f"E-{uid()}" for _ in range(5))
    t0 = NOW - 30 * MINUTE

    def reading(meter: str, minute: int, *flags: ReadingFlag, **registers: str) -> Reading:
        return Reading.create(
            meter,
            Utility.ELECTRICITY,
            t0 + minute * MINUTE,
            registers={"energy_active_import_total": Decimal(10), **{k: Decimal(v) for k, v in registers.items()}},
            flags=frozenset(flags),
        )

    first = [
        reading(flagged, 0, ReadingFlag.LEAKAGE),
        reading(residual, 0, **{RESIDUAL_CURRENT: "45"}),
        reading(drifting, 0, **{CLOCK_OFFSET: "-420"}),
        # Just under 30 mA, and the clock offset at its (exclusive) limit: neither is an alarm.
        reading(healthy, 0, **{RESIDUAL_CURRENT: "29.9", CLOCK_OFFSET: "300"}),
        # Exactly 30 mA, a household RCD's rated residual operating current (the collector flags it too): leakage.
        reading(at_rcd_limit, 0, **{RESIDUAL_CURRENT: "30"}),
    ]
    await publish(mqtt_url, readings(f"G-{uid()}", first))

    async def raised() -> list[set[str]] | None:
        found = [await open_types(api, m) for m in (flagged, residual, drifting, at_rcd_limit)]
        return found if all(found) else None

    assert await eventually(raised, "leakage and clock-drift alarms") == [
        {"electric_leakage"},
        {"electric_leakage"},
        {"clock_drift"},
        {"electric_leakage"},
    ]
    (leak,) = await alarms(api, residual)
    assert (leak["severity"], leak["details"]["value"], leak["details"]["unit"]) == ("critical", "45", "mA")
    assert await alarms(api, healthy) == []
    # Back inside the limits by the margin for the clear time (five minutes): every one clears.
    later = [
        reading(meter, minute, **{RESIDUAL_CURRENT: "3", CLOCK_OFFSET: "2"})
        for minute in range(1, 8)
        for meter in (flagged, residual, drifting, at_rcd_limit)
    ]
    await publish(mqtt_url, readings(f"G-{uid()}", later))

    async def cleared() -> bool:
        return not any([await open_types(api, m) for m in (flagged, residual, drifting, at_rcd_limit)])

    await eventually(cleared, "the leakage and clock-drift alarms to clear")


# --- line loss from insights' LineLossExceeded -----------------------------------------------------------


def exceeded(
    group: str, master: str, day: date, loss_pct: str = "12.5", estate_id: str | None = None
) -> LineLossExceeded:
    return LineLossExceeded(
        source="insights-test",
        group_id=group,
        master_meter_id=master,
        day=day,
        loss_pct=Decimal(loss_pct),
        threshold_pct=Decimal("8"),
        master_quantity=Decimal("1000"),
        sub_quantity=Decimal("875"),
        completeness_pct=Decimal("100"),
        estate_id=estate_id,
    )


async def line_loss_alarms(api: httpx.AsyncClient, group: str) -> list[dict[str, Any]]:
    found = (await api.get("/v1/alarms", params={"source_id": group})).json()
    return [a for a in found if a["alarm_type"] == LINE_LOSS]


def test_an_undescribed_master_meter_still_raises_one_major_alarm_on_the_group() -> None:
    [decision] = on_line_loss(exceeded("LL-g", "LL-m", date(2026, 12, 1)), None)
    assert isinstance(decision, Raise)
    assert (decision.source_id, decision.alarm_type, decision.severity) == ("LL-g", LINE_LOSS, AlarmSeverity.MAJOR)
    assert decision.placement is not None
    assert decision.placement.meter_id == "LL-m"
    assert decision.placement.estate is None
    assert decision.placement.tenant_id is None
    assert "线损超标" in decision.message_zh
    assert "12.5%" in decision.message_en
    assert TYPE_NAMES[LINE_LOSS] == ("线损超标", "Line loss over threshold")


def test_the_groups_estate_places_the_alarm_even_where_the_master_is_described_elsewhere() -> None:
    master = Target(meter_id="LL-m", estate="Estate-of-meter", building="B-1")
    [decision] = on_line_loss(exceeded("LL-g", "LL-m", date(2026, 12, 1), estate_id="Estate-of-group"), master)
    assert isinstance(decision, Raise)
    assert decision.placement is not None
    assert (decision.placement.estate, decision.placement.building) == ("Estate-of-group", "B-1")
    [undescribed] = on_line_loss(exceeded("LL-g", "LL-m", date(2026, 12, 1), estate_id="Estate-of-group"), None)
    assert isinstance(undescribed, Raise)
    assert undescribed.placement is not None
    assert undescribed.placement.estate == "Estate-of-group"
    [fallback] = on_line_loss(exceeded("LL-g", "LL-m", date(2026, 12, 1)), master)
    assert isinstance(fallback, Raise)
    assert fallback.placement is not None
    assert fallback.placement.estate == "Estate-of-meter"


async def test_a_line_loss_event_raises_one_alarm_that_estate_staff_see(api: httpx.AsyncClient, mqtt_url: str) -> None:
    group, master, estate, building = f"LL-{uid()}", f"E-{uid()}", f"Estate-{uid()}", f"B-{uid()}"
    put = await api.put(f"/v1/targets/{master}", json={"estate": estate, "building": building})
    assert put.status_code == 200, put.text
    first = exceeded(group, master, date(2026, 12, 1))
    # The same message twice (a redelivery), then the next day over the threshold again.
    await publish(mqtt_url, (topics.line_loss(group), first), (topics.line_loss(group), first))

    async def two_seen() -> list[dict[str, Any]] | None:
        found = await line_loss_alarms(api, group)
        return found if found and found[0]["occurrences"] >= 2 else None

    [alarm] = await eventually(two_seen, "the line-loss alarm")
    assert alarm["severity"] == "major"
    assert alarm["state"] == "active"
    assert (alarm["estate"], alarm["building"], alarm["meter_id"]) == (estate, building, master)
    assert alarm["room"] is None
    assert alarm["tenant_id"] is None
    assert alarm["details"]["day"] == "2026-12-01"
    assert alarm["details"]["loss_pct"] == "12.5"

    await publish(mqtt_url, (topics.line_loss(group), exceeded(group, master, date(2026, 12, 2), "9.1")))

    async def next_day() -> list[dict[str, Any]] | None:
        found = await line_loss_alarms(api, group)
        return found if found and found[0]["details"]["day"] == "2026-12-02" else None

    [alarm] = await eventually(next_day, "the next day on the same alarm")
    assert alarm["state"] == "active"
    assert alarm["occurrences"] == 3
    by_estate = (await api.get("/v1/alarms", params={"estate": estate})).json()
    assert [(a["source_id"], a["alarm_type"]) for a in by_estate] == [(group, LINE_LOSS)]


async def test_a_malformed_line_loss_message_is_parked_not_lost(api: httpx.AsyncClient, mqtt_url: str) -> None:
    group = f"LL-{uid()}"
    bad = exceeded(group, f"E-{uid()}", date(2026, 12, 1)).model_dump(mode="json")
    del bad["loss_pct"]
    await publish(mqtt_url, (topics.line_loss(group), json.dumps(bad).encode()))

    async def parked() -> list[dict[str, Any]] | None:
        letters = (await api.get("/v1/dead-letters")).json()
        return [letter for letter in letters if letter["topic"] == topics.line_loss(group)] or None

    [letter] = await eventually(parked, "the malformed message in the dead-letter table")
    assert letter["reason"] == "invalid_payload"
    assert group in letter["payload"]
    assert await line_loss_alarms(api, group) == []
