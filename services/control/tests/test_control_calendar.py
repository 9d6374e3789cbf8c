"""The holiday calendar beyond the library's data: operator-published years layered over chinese-calendar (pure,
table-driven, around 2027-01-01 where the library's data ends), and the published years through control's store,
API, audit log and deferrals (real PostgreSQL, real broker)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_control.adapters.calendars import StatutoryCalendar
from shuidian_control.adapters.parts import ControlParts
from shuidian_control.app import build_control, create_app
from shuidian_control.domain.calendar import (
    DayStatus,
    HolidayCalendar,
    LayeredCalendar,
    calendar_coverage,
    calendar_warning,
    published_year,
)
from shuidian_control.domain.windows import ProtectedWindows, ProtectionRule, is_protected, next_allowed
from shuidian_control.errors import NoAllowedInstant
from shuidian_control.settings import ControlSettings
from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandRequested,
    MeterRef,
    Utility,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
LIBRARY = StatutoryCalendar()
# 2027 as an operator would publish it (New Year 1–3 January, a Saturday worked in February).
Y2027 = published_year(2027, [date(2027, 1, 1), date(2027, 1, 2), date(2027, 1, 3)], [date(2027, 2, 13)])
WITH_2027 = LayeredCalendar({2027: Y2027}, LIBRARY)
WITHOUT = LayeredCalendar({}, LIBRARY)
# The operator corrects a year the library knows: 2026-10-01 is no holiday for them, 2026-12-31 is.
FIXED_2026 = published_year(2026, [date(2026, 12, 31)], [])


def local(year: int, month: int, day: int, hour: int) -> datetime:
    return datetime(year, month, day, hour, tzinfo=SHANGHAI)


# --- layering -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calendar", "day", "expected"),
    [
        # The library alone: knows 2026, nothing of 2027.
        (WITHOUT, date(2026, 10, 1), DayStatus.HOLIDAY),
        (WITHOUT, date(2026, 10, 10), DayStatus.ADJUSTED_WORKDAY),
        (WITHOUT, date(2026, 12, 31), DayStatus.REGULAR),
        (WITHOUT, date(2027, 1, 1), DayStatus.UNKNOWN),
        (WITHOUT, date(2027, 3, 10), DayStatus.UNKNOWN),
        # 2027 published: the operator's data for 2027, the library for the rest.
        (WITH_2027, date(2026, 10, 1), DayStatus.HOLIDAY),
        (WITH_2027, date(2026, 12, 31), DayStatus.REGULAR),
        (WITH_2027, date(2027, 1, 1), DayStatus.HOLIDAY),
        (WITH_2027, date(2027, 1, 3), DayStatus.HOLIDAY),
        (WITH_2027, date(2027, 1, 4), DayStatus.REGULAR),
        (WITH_2027, date(2027, 2, 13), DayStatus.ADJUSTED_WORKDAY),
        (WITH_2027, date(2027, 12, 31), DayStatus.REGULAR),
        (WITH_2027, date(2028, 1, 1), DayStatus.UNKNOWN),  # neither covers
        # Operator data wins over the library for a year both cover.
        (LayeredCalendar({2026: FIXED_2026}, LIBRARY), date(2026, 10, 1), DayStatus.REGULAR),
        (LayeredCalendar({2026: FIXED_2026}, LIBRARY), date(2026, 10, 10), DayStatus.REGULAR),
        (LayeredCalendar({2026: FIXED_2026}, LIBRARY), date(2026, 12, 31), DayStatus.HOLIDAY),
        (LayeredCalendar({2026: FIXED_2026}, LIBRARY), date(2025, 10, 1), DayStatus.HOLIDAY),
        # Before the library's data too.
        (WITHOUT, date(2003, 6, 1), DayStatus.UNKNOWN),
    ],
)
def test_published_years_win_and_the_library_covers_the_rest(
    calendar: HolidayCalendar, day: date, expected: DayStatus
) -> None:
    assert calendar.status(day) is expected


@pytest.mark.parametrize(
    ("holidays", "workdays", "problem"),
    [
        ([date(2026, 12, 31)], [], "dates outside 2027: 2026-12-31"),
        ([], [date(2028, 1, 1)], "dates outside 2027: 2028-01-01"),
        ([date(2027, 2, 13)], [date(2027, 2, 13)], "both holiday and working day: 2027-02-13"),
        ([], [date(2027, 2, 10)], "must be a Saturday or Sunday: 2027-02-10"),
    ],
)
def test_an_inconsistent_arrangement_is_refused(holidays: list[date], workdays: list[date], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        published_year(2027, holidays, workdays)


@pytest.mark.parametrize(
    ("calendar", "today", "last", "warns"),
    [
        (WITHOUT, date(2026, 11, 30), 2026, None),  # next year missing, but not December yet
        (WITHOUT, date(2026, 12, 1), 2026, "2027"),  # from 1 December
        (WITHOUT, date(2026, 12, 31), 2026, "2027"),
        (WITH_2027, date(2026, 12, 1), 2027, None),
        (WITHOUT, date(2027, 1, 1), None, "every date counts as a holiday"),  # this year uncovered: always
        (WITH_2027, date(2027, 6, 1), 2027, None),
        (WITH_2027, date(2027, 12, 1), 2027, "2028"),
        (LayeredCalendar({2028: published_year(2028, [], [])}, LIBRARY), date(2026, 12, 5), 2026, "2027"),  # a gap
        (LayeredCalendar({2027: Y2027, 2028: published_year(2028, [], [])}, LIBRARY), date(2026, 12, 5), 2028, None),
    ],
)
def test_coverage_and_the_warning_from_1_december(
    calendar: HolidayCalendar, today: date, last: int | None, warns: str | None
) -> None:
    assert calendar_coverage(calendar, today) == last
    warning = calendar_warning(calendar, today)
    if warns is None:
        assert warning is None
    else:
        assert warning is not None
        assert warns in warning


# --- deferral around 2027-01-01 -------------------------------------------------------------------------------------

DEFAULTS = ProtectedWindows()  # nights 22–07, weekends, holidays


@pytest.mark.parametrize(
    ("calendar", "now", "allowed_at"),
    [
        # A Thursday afternoon in 2026: allowed whatever 2027 holds.
        (WITHOUT, local(2026, 12, 31, 15), local(2026, 12, 31, 15)),
        (WITH_2027, local(2026, 12, 31, 15), local(2026, 12, 31, 15)),
        # New Year's Eve night: the published New Year (Fri–Sun) pushes the trip to Monday 07:00.
        (WITH_2027, local(2026, 12, 31, 23), local(2027, 1, 4, 7)),
        # An adjusted working Saturday is a working day: its morning allows the trip.
        (WITH_2027, local(2027, 2, 12, 23), local(2027, 2, 13, 7)),
        # An ordinary Wednesday in 2027, covered only by the operator's data.
        (WITH_2027, local(2027, 3, 10, 10), local(2027, 3, 10, 10)),
    ],
)
def test_trips_around_the_end_of_the_librarys_data(
    calendar: HolidayCalendar, now: datetime, allowed_at: datetime
) -> None:
    assert next_allowed(now, DEFAULTS, calendar) == allowed_at.astimezone(UTC)


@pytest.mark.parametrize("now", [local(2026, 12, 31, 23), local(2027, 1, 1, 12), local(2027, 3, 10, 10)])
def test_without_the_published_year_no_trip_ever_falls_due_in_2027(now: datetime) -> None:
    protection = is_protected(now, DEFAULTS, WITHOUT)
    assert protection is not None
    if now.date().year == 2027:
        assert protection.rule is ProtectionRule.CALENDAR_UNKNOWN
        assert "PUT /v1/calendar/2027" in protection.detail
    with pytest.raises(NoAllowedInstant) as raised:
        next_allowed(now, DEFAULTS, WITHOUT)
    assert raised.value.resume_at is not None  # re-evaluated later (a year may be published by then)


def test_holidays_unprotected_ignore_the_missing_year() -> None:
    weekdays_only = ProtectedWindows(nights=None, weekends=True, holidays=False)
    assert is_protected(local(2027, 3, 10, 10), weekdays_only, WITHOUT) is None


# --- store, API and deferrals (PostgreSQL) --------------------------------------------------------------------------

pg = pytest.mark.integration
YEAR = 2031  # a year no other test publishes (the database is shared by the session)


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


async def _forget(engine: AsyncEngine, year: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM control.holiday_calendars WHERE year = :y"), {"y": year})


@pg
async def test_a_published_year_releases_trips_deferred_for_an_unknown_calendar(engine: AsyncEngine) -> None:
    year = 2032
    await _forget(engine, year)
    clock = Clock(local(year, 3, 10, 10))  # a Wednesday; the library knows nothing of it
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="control", instance="t"), "control")
    control = build_control(
        engine,
        outbox,
        ControlSettings(environment="test", nights_start=None, nights_end=None),
        "control-test",
        clock=clock,
    )
    await control.calendar.load()
    meter = MeterRef(meter_id=f"E-{uuid.uuid4().hex[:8]}", utility=Utility.ELECTRICITY)
    exhausted = BalanceEvent(
        source="billing-test",
        account_id=f"acc-{uuid.uuid4().hex[:8]}",
        kind=BalanceEventKind.EXHAUSTED,
        level=BalanceLevel.EXHAUSTED,
        balance=Decimal("-1.00"),
        sequence=1,
        meters=(meter,),
    )
    try:
        await control.automation.on_balance(exhausted, "")
        assert await _sent(engine, meter.meter_id) == []
        async with engine.connect() as conn:
            reason = (
                await conn.execute(
                    text("SELECT reason FROM control.deferrals WHERE meter_id = :m"), {"m": meter.meter_id}
                )
            ).scalar_one()
        assert "calendar_unknown" in reason
        coverage = control.housekeeping.check_calendar()
        assert coverage.last_year is None
        assert coverage.warning is not None
        # The operator publishes the year; the deferral re-evaluates on the next tick and the trip goes out.
        async with engine.begin() as conn:
            await control.calendar.publish(conn, year, [date(year, 1, 1)], [], "test notice", "op-1")
            await control.automation.policy_changed(conn)
        await control.calendar.load()
        await control.housekeeping.tick()
        assert [c.kind for c in await _sent(engine, meter.meter_id)] == [CommandKind.TRIP]
        coverage = control.housekeeping.check_calendar()
        assert (coverage.last_year, coverage.warning) == (year, None)
        assert year in coverage.published_years  # other tests of the session may publish other years
    finally:
        await _forget(engine, year)


async def _sent(engine: AsyncEngine, meter_id: str) -> list[CommandRequested]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT payload FROM control.outbox WHERE topic = :t ORDER BY id"),
            {"t": topics.meter_command(meter_id)},
        )
        return [CommandRequested.model_validate_json(bytes(r.payload)) for r in rows]


@contextlib.asynccontextmanager
async def running(database_url: str, mqtt_url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = ControlSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:6]}",
        mqtt_clean_session=True,
        tick_seconds=0.1,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://control", auth=infra.service_auth("control", "op-1")
        ) as c:
            yield app, c


@pg
async def test_the_calendar_api_publishes_validates_audits_and_persists(
    engine: AsyncEngine, database_url: str, mqtt_url: str
) -> None:
    await _forget(engine, YEAR)
    body: dict[str, Any] = {
        "holidays": [f"{YEAR}-01-01", f"{YEAR}-01-02", f"{YEAR}-01-01"],
        "adjusted_workdays": [f"{YEAR}-01-04"],  # a Saturday
        "notice": "国务院办公厅关于节假日安排的通知",
    }
    try:
        async with running(database_url, mqtt_url) as (app, client):
            missing = await client.get(f"/v1/calendar/{YEAR}")
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("application/problem+json")
            hostile: list[tuple[dict[str, Any], str]] = [
                ({**body, "holidays": [f"{YEAR - 1}-12-31"]}, "outside"),
                ({**body, "adjusted_workdays": [f"{YEAR}-01-01"]}, "both holiday and working day"),
                ({**body, "adjusted_workdays": [f"{YEAR}-01-06"]}, "Saturday or Sunday"),
                ({**body, "holidays": ["not-a-date"]}, ""),
                ({**body, "notice": ""}, ""),
                ({**body, "extra": 1}, ""),
                ({k: v for k, v in body.items() if k != "holidays"}, ""),
            ]
            for bad, why in hostile:
                answer = await client.put(f"/v1/calendar/{YEAR}", json=bad)
                assert answer.status_code in (400, 422), (bad, answer.text)
                assert answer.headers["content-type"].startswith("application/problem+json")
                assert why in answer.text
            assert (await client.put("/v1/calendar/1999", json=body)).status_code == 422
            assert (await client.get(f"/v1/calendar/{YEAR}")).status_code == 404  # nothing was written

            stored = await client.put(f"/v1/calendar/{YEAR}", json=body)
            assert stored.status_code == 200, stored.text
            view = stored.json()
            assert view["holidays"] == [f"{YEAR}-01-01", f"{YEAR}-01-02"]
            assert view["adjusted_workdays"] == [f"{YEAR}-01-04"]
            assert (view["published_by"], view["notice"]) == ("op-1", body["notice"])
            control: ControlParts = app.state.control
            assert control.calendar.status(date(YEAR, 1, 2)) is DayStatus.HOLIDAY
            assert control.calendar.status(date(YEAR, 1, 4)) is DayStatus.ADJUSTED_WORKDAY
            assert control.calendar.status(date(YEAR, 3, 5)) is DayStatus.REGULAR
            coverage = (await client.get("/v1/calendar")).json()
            assert YEAR in coverage["published_years"]
            # Replacing the year: the new arrangement alone counts.
            again = await client.put(f"/v1/calendar/{YEAR}", json={**body, "holidays": [f"{YEAR}-01-03"]})
            assert again.status_code == 200
            assert control.calendar.status(date(YEAR, 1, 2)) is DayStatus.REGULAR
            log = (await client.get("/v1/policy-log", params={"subject": f"calendar:{YEAR}"})).json()
            assert [e["action"] for e in log] == ["calendar_replaced", "calendar_published"]
            assert all(e["actor"] == "op-1" for e in log)
        # A new instance reads it back from its schema.
        async with running(database_url, mqtt_url) as (app, client):
            assert (await client.get(f"/v1/calendar/{YEAR}")).json()["holidays"] == [f"{YEAR}-01-03"]
            assert app.state.control.calendar.status(date(YEAR, 1, 3)) is DayStatus.HOLIDAY
            assert app.state.control.calendar.status(date(YEAR + 1, 1, 3)) is DayStatus.UNKNOWN
    finally:
        await _forget(engine, YEAR)
