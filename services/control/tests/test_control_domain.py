"""The pure middles split out of the adapters: operator requests per meter, due schedule occurrences, stored
settings → estate policy, the longer hold, calendar coverage, the order of the protection rules. No database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest

from shuidian_control.domain.calendar import FixedCalendar, LayeredCalendar, coverage_report
from shuidian_control.domain.decisions import Issue, Shadow
from shuidian_control.domain.lifecycle import Transition, after_result
from shuidian_control.domain.operations import NotIssued, OperatorRequest, Outcome, decide_request
from shuidian_control.domain.policies import (
    EstatePolicy,
    EstateSettings,
    KeepPower,
    KeepPowerReason,
    MeterSupply,
    estate_policy,
    longest_hold,
)
from shuidian_control.domain.schedules import due_occurrence, latest_occurrence
from shuidian_control.domain.windows import (
    PROTECTION_RULES,
    SHANGHAI,
    Blackout,
    DailyWindow,
    OperatorHold,
    ProtectedWindows,
    ProtectionRule,
    is_protected,
)
from shuidian_shared.messages import (
    CommandKind,
    CommandOrigin,
    CommandResult,
    CommandState,
    CommandStatus,
    RelayState,
    Utility,
)

K = CommandKind
OPEN, CLOSED = RelayState.OPEN, RelayState.CLOSED
ON = Shadow(CLOSED, CLOSED, 3)
OFF = Shadow(OPEN, OPEN, 4)
ELEC = MeterSupply(Utility.ELECTRICITY)
WATER = MeterSupply(Utility.WATER)
ELDERLY = MeterSupply(Utility.ELECTRICITY, KeepPower(KeepPowerReason.ELDERLY))
P = EstatePolicy()
P_WATER = EstatePolicy(prepaid_water=True)
CALENDAR = FixedCalendar(years=frozenset({2025}))


def at(stamp: str) -> datetime:
    """A Shanghai wall-clock stamp as an aware UTC instant."""
    return datetime.fromisoformat(stamp).replace(tzinfo=SHANGHAI).astimezone(UTC)


WED_NOON = at("2025-10-15 12:00")
WED_NIGHT = at("2025-10-15 23:00")


def request(kind: CommandKind, **options: object) -> OperatorRequest:
    return OperatorRequest(kind=kind, reason="tenant asked", actor="op-1", **options)  # type: ignore[arg-type]


def outcome(decision: Issue | NotIssued) -> tuple[str, object, str]:
    """Issue → ("issue", kind, reason); NotIssued → (outcome, kind, detail): what the table compares."""
    if isinstance(decision, Issue):
        return ("issue", decision.kind, decision.reason)
    return (decision.outcome.value, decision.kind, decision.detail)


@pytest.mark.parametrize(
    ("request_", "shadow", "supply", "policy", "now", "expected"),
    [
        # A trip outside the windows goes out; inside them it is blocked unless overridden, with the rule on record.
        (request(K.TRIP), ON, ELEC, P, WED_NOON, ("issue", K.TRIP, "operator trip: tenant asked")),
        (
            request(K.TRIP),
            ON,
            ELEC,
            P,
            WED_NIGHT,
            ("blocked", K.TRIP, "protected window (night: night 22:00–07:00 local); override with a reason"),
        ),
        (
            request(K.TRIP, override_windows=True),
            ON,
            ELEC,
            P,
            WED_NIGHT,
            ("issue", K.TRIP, "operator trip: tenant asked (overrides night)"),
        ),
        # A restore ignores the windows.
        (request(K.DIRECT_CLOSE), OFF, ELEC, P, WED_NIGHT, ("issue", K.DIRECT_CLOSE, "operator restore: tenant asked")),
        # 保电 blocks a trip (even at noon), unless lifted; an intent already reached is a skip.
        (
            request(K.TRIP),
            ON,
            ELDERLY,
            P,
            WED_NOON,
            ("blocked", None, "operator trip refused: household keep-power (elderly); lift it explicitly to trip"),
        ),
        (
            request(K.TRIP, lift_keep_power=True),
            ON,
            ELDERLY,
            P,
            WED_NOON,
            ("issue", K.TRIP, "operator trip: tenant asked (household keep-power (elderly) lifted by the operator)"),
        ),
        (request(K.TRIP), OFF, ELEC, P, WED_NOON, ("skip", None, "operator trip: tenant asked: supply already open")),
        # A valve command for an electricity meter (or a relay command for a water meter) is blocked.
        (
            request(K.VALVE_CLOSE),
            ON,
            ELEC,
            P,
            WED_NOON,
            ("blocked", K.VALVE_CLOSE, "valve_close does not apply to a electricity meter"),
        ),
        (request(K.TRIP), ON, WATER, P_WATER, WED_NOON, ("blocked", K.TRIP, "trip does not apply to a water meter")),
        (request(K.VALVE_CLOSE), ON, WATER, P_WATER, WED_NOON, ("issue", K.VALVE_CLOSE, "operator trip: tenant asked")),
        # Commands that move no relay carry no intent and ignore windows and 保电.
        (
            request(K.PARAMETER_WRITE, origin=CommandOrigin.SCHEDULE),
            ON,
            ELDERLY,
            P,
            WED_NIGHT,
            ("issue", K.PARAMETER_WRITE, "schedule parameter_write: tenant asked"),
        ),
    ],
)
def test_decide_request(
    request_: OperatorRequest,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    now: datetime,
    expected: tuple[str, object, str],
) -> None:
    decision = decide_request(request_, shadow=shadow, supply=supply, policy=policy, calendar=CALENDAR, now=now)
    assert outcome(decision) == expected
    assert isinstance(decision, Issue) == (expected[0] == Outcome.ISSUE.value)


ELEVEN = time(23)


@pytest.mark.parametrize(
    ("now", "run_at", "at_local", "last", "expected"),
    [
        # A one-shot owes its instant until it ran.
        (WED_NOON, at("2025-10-15 11:00"), None, None, at("2025-10-15 11:00")),
        (WED_NOON, at("2025-10-15 11:00"), None, at("2025-10-15 11:00"), None),
        # A daily schedule owes its latest occurrence: yesterday's before today's time, today's after it.
        (WED_NOON, None, ELEVEN, None, at("2025-10-14 23:00")),
        (WED_NOON, None, ELEVEN, at("2025-10-14 23:00"), None),
        (WED_NIGHT, None, ELEVEN, at("2025-10-14 23:00"), at("2025-10-15 23:00")),
        # Created after today's time (last = its creation): first owed tomorrow.
        (at("2025-10-15 23:10"), None, ELEVEN, at("2025-10-15 23:10"), None),
    ],
)
def test_due_occurrence(
    now: datetime, run_at: datetime | None, at_local: time | None, last: datetime | None, expected: datetime | None
) -> None:
    assert due_occurrence(now, run_at=run_at, at_local=at_local, last_occurrence=last, tz=SHANGHAI) == expected


def test_due_occurrence_needs_a_time() -> None:
    with pytest.raises(ValueError, match="daily"):
        due_occurrence(WED_NOON, run_at=None, at_local=None, last_occurrence=None, tz=SHANGHAI)


def test_latest_occurrence_keeps_the_callers_zone() -> None:
    assert latest_occurrence(WED_NOON, ELEVEN, SHANGHAI) == at("2025-10-14 23:00")
    assert latest_occurrence(WED_NOON, ELEVEN, SHANGHAI).tzinfo is UTC


def stored(nights: tuple[time, time] | None = (time(22), time(7)), **overrides: object) -> EstateSettings:
    values: dict[str, object] = {
        "nights_start": nights[0] if nights else None,
        "nights_end": nights[1] if nights else None,
        "weekends": True,
        "holidays": True,
        "restore": K.DIRECT_CLOSE,
        "prepaid_water": False,
    }
    values.update(overrides)
    return EstateSettings(**values)  # type: ignore[arg-type]


def test_estate_policy_from_stored_settings() -> None:
    keep = KeepPower(KeepPowerReason.OTHER, "typhoon")
    hold = OperatorHold("cold wave")
    policy = estate_policy(stored(weekends=False, restore=K.CLOSE_ALLOWED, prepaid_water=True), keep, hold, SHANGHAI)
    assert policy.windows == ProtectedWindows(
        nights=DailyWindow(time(22), time(7)), weekends=False, holidays=True, hold=hold
    )
    assert (policy.restore, policy.prepaid_water, policy.keep_power, policy.tz) == (
        K.CLOSE_ALLOWED,
        True,
        keep,
        SHANGHAI,
    )
    assert estate_policy(stored(nights=None), None, None, SHANGHAI).windows.nights is None


def test_estate_policy_refuses_a_restore_that_is_no_restore() -> None:
    with pytest.raises(ValueError, match="restore"):
        estate_policy(stored(restore=K.TRIP), None, None, SHANGHAI)


SOON = OperatorHold("estate", at("2025-10-16 00:00"))
LATER = OperatorHold("all estates", at("2025-10-20 00:00"))
OPEN_ENDED = OperatorHold("until lifted")


@pytest.mark.parametrize(
    ("holds", "expected"),
    [
        ((None, None), None),
        ((SOON, None), SOON),
        ((None, LATER), LATER),
        ((SOON, LATER), LATER),
        ((LATER, SOON), LATER),
        ((SOON, OPEN_ENDED), OPEN_ENDED),
        ((OPEN_ENDED, LATER), OPEN_ENDED),
    ],
)
def test_longest_hold(holds: tuple[OperatorHold | None, ...], expected: OperatorHold | None) -> None:
    assert longest_hold(*holds) == expected


def test_coverage_report() -> None:
    base = FixedCalendar(years=frozenset({2025}))
    published = {2026: FixedCalendar(years=frozenset({2026}))}
    report = coverage_report(LayeredCalendar(published, base), date(2025, 12, 5))
    assert (report.last_year, report.published_years, report.next_year_covered, report.warning) == (
        2026,
        (2026,),
        True,
        None,
    )
    uncovered = coverage_report(LayeredCalendar({}, base), date(2025, 12, 5))
    assert (uncovered.last_year, uncovered.next_year_covered) == (2025, False)
    assert "PUT /v1/calendar/2026" in (uncovered.warning or "")


def test_every_rule_has_its_place_and_the_first_is_reported() -> None:
    """One rule function per ProtectionRule; with every rule in force the hold is named, then in table order."""
    assert len(PROTECTION_RULES) == len(ProtectionRule)
    saturday_night = at("2025-10-18 23:00")  # a weekend night in a blackout, under a hold
    windows = ProtectedWindows(
        hold=OperatorHold("cold wave"),
        blackouts=(Blackout(at("2025-10-18 00:00"), at("2025-10-19 00:00"), "exams"),),
    )

    def first(windows: ProtectedWindows) -> ProtectionRule | None:
        found = is_protected(saturday_night, windows, CALENDAR)
        return None if found is None else found.rule

    assert first(windows) is ProtectionRule.OPERATOR_HOLD
    assert first(ProtectedWindows(blackouts=windows.blackouts)) is ProtectionRule.BLACKOUT
    assert first(ProtectedWindows()) is ProtectionRule.WEEKEND
    assert first(ProtectedWindows(nights=None, weekends=False)) is None


S, ST = CommandState, CommandStatus
EXPIRES = WED_NOON + timedelta(minutes=10)
BACKOFF = {"retry_initial": timedelta(seconds=2), "retry_max": timedelta(seconds=60)}


def answer(status: CommandStatus, attempt: int = 2, frame: str | None = None) -> CommandResult:
    return CommandResult(
        source="collector-test",
        command_id=uuid.uuid4(),
        meter_id="E-1",
        kind=K.TRIP,
        status=status,
        detail="bus says so",
        response_frame=frame,
        attempt=attempt,
    )


@pytest.mark.parametrize(
    ("state", "result", "now", "expected"),
    [
        # A finished command never reopens; a confirmation from any attempt counts.
        (S.CONFIRMED, answer(ST.FAILED), WED_NOON, None),
        (S.CANCELLED, answer(ST.CONFIRMED), WED_NOON, None),
        (S.SENT, answer(ST.CONFIRMED, attempt=1), WED_NOON, Transition(S.CONFIRMED, "bus says so")),
        # An older attempt's other news changes nothing; an acknowledgement moves once.
        (S.SENT, answer(ST.FAILED, attempt=1), WED_NOON, None),
        (S.SENT, answer(ST.ACKNOWLEDGED), WED_NOON, Transition(S.ACKNOWLEDGED, "bus says so")),
        (S.ACKNOWLEDGED, answer(ST.ACKNOWLEDGED), WED_NOON, None),
        (S.SENT, answer(ST.EXPIRED), WED_NOON, Transition(S.EXPIRED, "bus says so")),
        # Final refusals fail at once, labelled, marked for the intent to be dropped.
        (
            S.SENT,
            answer(ST.UNSUPPORTED),
            WED_NOON,
            Transition(S.FAILED, "unsupported 表计不支持: bus says so", refused=ST.UNSUPPORTED),
        ),
        (
            S.SENT,
            answer(ST.REJECTED, frame="68 16"),
            WED_NOON,
            Transition(S.FAILED, "rejected 参数或凭据无效: bus says so", refused=ST.REJECTED),
        ),
        # The meter answered and still failed: final. No answer: retry after the back-off (attempt 2 → 4 s) …
        (S.SENT, answer(ST.FAILED, frame="68 16"), WED_NOON, Transition(S.FAILED, "bus says so")),
        (
            S.SENT,
            answer(ST.FAILED),
            WED_NOON,
            Transition(
                S.PENDING,
                f"attempt 2 got no answer (bus says so); retry at {(WED_NOON + timedelta(seconds=4)).isoformat()}",
                retry_at=WED_NOON + timedelta(seconds=4),
            ),
        ),
        # … unless the retry would not start before the TTL.
        (
            S.SENT,
            answer(ST.FAILED),
            EXPIRES - timedelta(seconds=4),
            Transition(S.EXPIRED, "no answer after 2 attempt(s) before the TTL: bus says so"),
        ),
    ],
)
def test_after_result(state: CommandState, result: CommandResult, now: datetime, expected: Transition | None) -> None:
    assert after_result(state, 2, EXPIRES, result, now, **BACKOFF) == expected
