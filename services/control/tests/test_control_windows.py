"""Protected windows against real Chinese holiday arrangements (2025 National Day, 2026 Spring Festival, 调休)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_control.adapters.calendars import StatutoryCalendar
from shuidian_control.domain.calendar import DayStatus, FixedCalendar
from shuidian_control.domain.windows import (
    SHANGHAI,
    Blackout,
    DailyWindow,
    OperatorHold,
    ProtectedWindows,
    ProtectionRule,
    is_protected,
    next_allowed,
)
from shuidian_control.errors import NoAllowedInstant
from shuidian_control.settings import ControlSettings

CALENDAR = StatutoryCalendar()
DEFAULT = ProtectedWindows()
NO_WEEKENDS = ProtectedWindows(weekends=False)
NO_HOLIDAYS = ProtectedWindows(holidays=False)
DAYS_ONLY = ProtectedWindows(nights=None)
NOTHING = ProtectedWindows(nights=None, weekends=False, holidays=False)
R = ProtectionRule


def at(stamp: str) -> datetime:
    """A Shanghai wall-clock stamp as an aware UTC instant."""
    return datetime.fromisoformat(stamp).replace(tzinfo=SHANGHAI).astimezone(UTC)


def local(instant: datetime) -> str:
    return instant.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(
    ("day", "status"),
    [
        (date(2025, 10, 1), DayStatus.HOLIDAY),  # 国庆
        (date(2025, 10, 6), DayStatus.HOLIDAY),  # 中秋 inside the 国庆 period
        (date(2025, 10, 8), DayStatus.HOLIDAY),  # a Wednesday, in lieu
        (date(2025, 10, 9), DayStatus.REGULAR),
        (date(2025, 9, 28), DayStatus.ADJUSTED_WORKDAY),  # Sunday worked
        (date(2025, 10, 11), DayStatus.ADJUSTED_WORKDAY),  # Saturday worked
        (date(2025, 10, 12), DayStatus.REGULAR),  # a plain Sunday is not a statutory holiday
        (date(2026, 1, 4), DayStatus.ADJUSTED_WORKDAY),  # Sunday after New Year
        (date(2026, 2, 14), DayStatus.ADJUSTED_WORKDAY),  # Saturday before 春节
        (date(2026, 2, 15), DayStatus.HOLIDAY),
        (date(2026, 2, 23), DayStatus.HOLIDAY),
        (date(2026, 2, 24), DayStatus.REGULAR),
        (date(2026, 2, 28), DayStatus.ADJUSTED_WORKDAY),
        (date(2027, 3, 3), DayStatus.UNKNOWN),  # chinese-calendar 1.11.0 stops at 2026
        (date(2003, 3, 3), DayStatus.UNKNOWN),
    ],
)
def test_statutory_calendar(day: date, status: DayStatus) -> None:
    assert CALENDAR.status(day) is status


@pytest.mark.parametrize(
    ("stamp", "windows", "rule"),
    [
        # Nights cross midnight; the window is [22:00, 07:00).
        ("2025-10-09 21:59:59", DEFAULT, None),
        ("2025-10-09 22:00:00", DEFAULT, R.NIGHT),
        ("2025-10-10 03:00:00", DEFAULT, R.NIGHT),
        ("2025-10-10 06:59:59", DEFAULT, R.NIGHT),
        ("2025-10-10 07:00:00", DEFAULT, None),
        ("2025-10-10 07:00:00", ProtectedWindows(nights=DailyWindow(time(23, 30), time(7, 30))), R.NIGHT),
        ("2025-10-09 23:00:00", ProtectedWindows(nights=DailyWindow(time(23, 30), time(7, 30))), None),
        ("2025-10-09 12:30:00", ProtectedWindows(nights=DailyWindow(time(12), time(14))), R.NIGHT),
        ("2025-10-09 23:00:00", ProtectedWindows(nights=DailyWindow(time(12), time(14))), None),
        ("2025-10-09 23:00:00", DAYS_ONLY, None),
        # Weekends, unless the day is an adjusted working day.
        ("2025-10-18 10:00:00", DEFAULT, R.WEEKEND),
        ("2025-10-19 10:00:00", DEFAULT, R.WEEKEND),
        ("2025-10-18 10:00:00", NO_WEEKENDS, None),
        ("2025-10-11 10:00:00", DEFAULT, None),  # Saturday 调休
        ("2025-09-28 10:00:00", DEFAULT, None),  # Sunday 调休
        ("2026-01-04 10:00:00", DEFAULT, None),
        ("2026-02-14 10:00:00", DEFAULT, None),
        ("2026-02-28 10:00:00", DEFAULT, None),
        ("2026-02-14 10:00:00", NO_HOLIDAYS, None),  # 调休 still counts as a working day
        ("2026-02-14 23:00:00", DEFAULT, R.NIGHT),
        # Statutory holidays, weekday or not; a holiday on a weekend reports the holiday.
        ("2025-10-01 12:00:00", DEFAULT, R.HOLIDAY),
        ("2025-10-04 12:00:00", DEFAULT, R.HOLIDAY),
        ("2025-10-08 12:00:00", DEFAULT, R.HOLIDAY),
        ("2025-10-08 12:00:00", NO_HOLIDAYS, None),
        ("2025-10-04 12:00:00", NO_HOLIDAYS, R.WEEKEND),
        ("2025-10-09 12:00:00", DEFAULT, None),
        ("2026-02-17 12:00:00", DEFAULT, R.HOLIDAY),
        ("2026-02-24 12:00:00", DEFAULT, None),
        ("2026-01-01 00:00:00", DEFAULT, R.HOLIDAY),
        ("2025-12-31 23:59:59", NO_HOLIDAYS, R.NIGHT),
        # Years the calendar does not know: protected while holidays are protected.
        ("2027-03-03 10:00:00", DEFAULT, R.CALENDAR_UNKNOWN),
        ("2027-03-03 10:00:00", NO_HOLIDAYS, None),
        ("2027-03-06 10:00:00", NO_HOLIDAYS, R.WEEKEND),
        # Operator switch and blackouts come first.
        ("2025-10-15 10:00:00", ProtectedWindows(hold=OperatorHold("heatwave")), R.OPERATOR_HOLD),
        (
            "2025-10-15 10:00:00",
            ProtectedWindows(hold=OperatorHold("heatwave", at("2025-10-15 12:00"))),
            R.OPERATOR_HOLD,
        ),
        ("2025-10-15 12:00:00", ProtectedWindows(hold=OperatorHold("heatwave", at("2025-10-15 12:00"))), None),
        ("2025-10-01 12:00:00", ProtectedWindows(hold=OperatorHold("heatwave")), R.OPERATOR_HOLD),
        (
            "2025-10-15 10:00:00",
            ProtectedWindows(blackouts=(Blackout(at("2025-10-15 09:00"), at("2025-10-15 12:00"), "exams"),)),
            R.BLACKOUT,
        ),
        (
            "2025-10-15 12:00:00",
            ProtectedWindows(blackouts=(Blackout(at("2025-10-15 09:00"), at("2025-10-15 12:00"), "exams"),)),
            None,
        ),
        (
            "2025-10-15 08:59:59",
            ProtectedWindows(blackouts=(Blackout(at("2025-10-15 09:00"), at("2025-10-15 12:00"), "exams"),)),
            None,
        ),
    ],
)
def test_is_protected(stamp: str, windows: ProtectedWindows, rule: ProtectionRule | None) -> None:
    protection = is_protected(at(stamp), windows, CALENDAR)
    assert (protection.rule if protection else None) is rule


def test_protection_says_until_when() -> None:
    protection = is_protected(at("2025-10-09 23:00"), DEFAULT, CALENDAR)
    assert protection is not None
    assert protection.until == at("2025-10-10 07:00")
    assert "22:00–07:00" in protection.detail


@pytest.mark.parametrize(
    ("stamp", "windows", "allowed"),
    [
        ("2025-09-30 21:00", DEFAULT, "2025-09-30 21:00:00"),  # allowed now is now
        ("2025-09-30 23:00", DEFAULT, "2025-10-09 07:00:00"),  # eve of 国庆, walks the whole Oct 1–8 period
        ("2025-10-03 15:00", DEFAULT, "2025-10-09 07:00:00"),
        ("2025-10-08 22:30", DEFAULT, "2025-10-09 07:00:00"),
        ("2025-10-10 22:30", DEFAULT, "2025-10-11 07:00:00"),  # into an adjusted working Saturday
        ("2025-09-27 12:00", DEFAULT, "2025-09-28 07:00:00"),  # Saturday, then a worked Sunday
        ("2026-02-13 22:30", DEFAULT, "2026-02-14 07:00:00"),  # 春节 eve is a worked Saturday
        ("2026-02-14 22:30", DEFAULT, "2026-02-24 07:00:00"),  # across the nine days of 春节
        ("2026-02-14 22:30", NO_HOLIDAYS, "2026-02-16 07:00:00"),
        ("2025-12-31 23:00", DEFAULT, "2026-01-04 07:00:00"),  # year end, New Year, then a worked Sunday
        ("2025-12-31 23:00", NO_HOLIDAYS, "2026-01-01 07:00:00"),
        ("2025-10-31 22:30", DEFAULT, "2025-11-03 07:00:00"),  # month end into a weekend
        ("2025-10-31 22:30", NO_WEEKENDS, "2025-11-01 07:00:00"),
        ("2025-10-18 10:00", DEFAULT, "2025-10-20 07:00:00"),
        ("2025-10-18 10:00", DAYS_ONLY, "2025-10-20 00:00:00"),
        ("2025-10-18 10:00", NOTHING, "2025-10-18 10:00:00"),
        ("2025-10-15 23:00", ProtectedWindows(nights=DailyWindow(time(23, 30), time(6))), "2025-10-15 23:00:00"),
        ("2025-10-15 23:45", ProtectedWindows(nights=DailyWindow(time(23, 30), time(6))), "2025-10-16 06:00:00"),
        ("2025-10-15 12:10", ProtectedWindows(nights=DailyWindow(time(12), time(14))), "2025-10-15 14:00:00"),
        (
            "2025-10-15 10:00",
            ProtectedWindows(blackouts=(Blackout(at("2025-10-15 09:00"), at("2025-10-15 12:00"), "exams"),)),
            "2025-10-15 12:00:00",
        ),
        (
            # A blackout ending at night hands over to the night window.
            "2025-10-15 10:00",
            ProtectedWindows(blackouts=(Blackout(at("2025-10-15 09:00"), at("2025-10-15 23:00"), "festival"),)),
            "2025-10-16 07:00:00",
        ),
        (
            # Back-to-back blackouts running into a weekend.
            "2025-10-15 10:00",
            ProtectedWindows(
                blackouts=(
                    Blackout(at("2025-10-16 12:00"), at("2025-10-17 22:00"), "second"),
                    Blackout(at("2025-10-15 09:00"), at("2025-10-16 12:00"), "first"),
                )
            ),
            "2025-10-20 07:00:00",
        ),
        (
            "2025-10-15 10:00",
            ProtectedWindows(hold=OperatorHold("cold", at("2025-10-15 15:00"))),
            "2025-10-15 15:00:00",
        ),
        (
            "2025-10-15 10:00",
            ProtectedWindows(hold=OperatorHold("cold", at("2025-10-17 23:00"))),
            "2025-10-20 07:00:00",
        ),
        ("2026-12-31 23:00", NO_HOLIDAYS, "2027-01-01 07:00:00"),  # 2027 has no calendar data; weekends still known
    ],
)
def test_next_allowed(stamp: str, windows: ProtectedWindows, allowed: str) -> None:
    result = next_allowed(at(stamp), windows, CALENDAR)
    assert result.tzinfo is UTC
    assert local(result) == allowed


def test_open_ended_hold_has_no_next_allowed() -> None:
    with pytest.raises(NoAllowedInstant) as caught:
        next_allowed(at("2025-10-15 10:00"), ProtectedWindows(hold=OperatorHold("typhoon")), CALENDAR)
    assert caught.value.resume_at is None


def test_search_is_bounded() -> None:
    long = Blackout(at("2025-01-01 00:00"), at("2025-06-01 00:00"), "renovation")
    with pytest.raises(NoAllowedInstant) as caught:
        next_allowed(at("2025-01-10 10:00"), ProtectedWindows(blackouts=(long,)), CALENDAR)
    assert caught.value.resume_at == long.end  # past the horizon: resume where the search stopped


def test_unknown_year_is_protected_throughout() -> None:
    with pytest.raises(NoAllowedInstant) as caught:
        next_allowed(at("2026-12-31 23:00"), DEFAULT, CALENDAR, horizon=timedelta(days=10))
    assert caught.value.resume_at is not None
    assert caught.value.resume_at >= at("2027-01-10 23:00")


def test_fixed_calendar_and_other_time_zones() -> None:
    calendar = FixedCalendar(
        holidays=frozenset({date(2025, 3, 5)}), adjusted_workdays=frozenset({date(2025, 3, 8)}), years=frozenset({2025})
    )
    urumqi = ZoneInfo("Asia/Urumqi")  # UTC+6: the same instant is two hours earlier on the wall
    assert calendar.status(date(2026, 1, 5)) is DayStatus.UNKNOWN
    assert local(next_allowed(at("2025-03-04 23:00"), DEFAULT, calendar)) == "2025-03-06 07:00:00"
    assert local(next_allowed(at("2025-03-07 23:00"), DEFAULT, calendar)) == "2025-03-08 07:00:00"
    assert is_protected(at("2025-03-04 23:00"), DEFAULT, calendar, urumqi) is None  # 21:00 in Urumqi


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: DailyWindow(time(7), time(7)), "start != end"),
        (lambda: DailyWindow(time(22, tzinfo=UTC), time(7)), "naive"),
        (lambda: Blackout(at("2025-10-15 12:00"), at("2025-10-15 09:00")), "end after"),
        (lambda: Blackout(datetime(2025, 10, 15), at("2025-10-15 09:00")), "aware"),  # noqa: DTZ001 - naive on purpose
        (lambda: OperatorHold("x", datetime(2025, 10, 15)), "aware"),  # noqa: DTZ001 - naive on purpose
        (lambda: is_protected(datetime(2025, 10, 15), DEFAULT, CALENDAR), "aware"),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_rejects_invalid_input(bad: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bad()


START = datetime(2025, 1, 1)  # noqa: DTZ001 - hypothesis takes naive bounds and attaches the zone
END = datetime(2026, 11, 1)  # noqa: DTZ001
minutes = st.integers(0, 24 * 60 - 1).map(lambda m: time(m // 60, m % 60))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[datetime, ProtectedWindows]:
    """A random instant and random windows, with holds and blackouts near it so they matter."""
    now = draw(st.datetimes(START, END, timezones=st.just(UTC)))
    near = st.integers(-2 * 24 * 60, 6 * 24 * 60).map(lambda m: now + timedelta(minutes=m))
    nights = draw(st.none() | st.tuples(minutes, minutes).filter(lambda se: se[0] != se[1]))
    blackouts = []
    for _ in range(draw(st.integers(0, 3))):
        start = draw(near)
        blackouts.append(Blackout(start, start + timedelta(minutes=draw(st.integers(1, 3 * 24 * 60))), "drawn"))
    hold = OperatorHold("drawn", draw(near)) if draw(st.booleans()) else None
    windows = ProtectedWindows(
        nights=DailyWindow(*nights) if nights else None,
        weekends=draw(st.booleans()),
        holidays=draw(st.booleans()),
        hold=hold,
        blackouts=tuple(blackouts),
    )
    return now, windows


GRID = timedelta(minutes=7)


@settings(deadline=None, max_examples=200)
@given(scenario=scenarios())
def test_next_allowed_is_the_first_allowed_instant(scenario: tuple[datetime, ProtectedWindows]) -> None:
    now, windows = scenario
    allowed = next_allowed(now, windows, CALENDAR)
    assert allowed >= now
    assert is_protected(allowed, windows, CALENDAR) is None
    if allowed > now:
        assert is_protected(allowed - timedelta(microseconds=1), windows, CALENDAR) is not None
    probe = now
    while probe < allowed:
        assert is_protected(probe, windows, CALENDAR) is not None, probe
        probe += GRID


def test_an_empty_night_setting_means_no_night_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_NIGHTS_START", "")
    monkeypatch.setenv("CONTROL_NIGHTS_END", "")
    configured = ControlSettings(environment="test")
    assert (configured.nights_start, configured.nights_end) == (None, None)
    monkeypatch.setenv("CONTROL_NIGHTS_START", "23:30")
    assert ControlSettings(environment="test").nights_start == time(23, 30)
