"""Trip/close decisions: 保电, protected windows, hysteresis, stale events, deferrals, operator requests, reconcile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_control.adapters.calendars import StatutoryCalendar
from shuidian_control.domain.decisions import (
    BalanceChange,
    Decision,
    Defer,
    ForcedSupply,
    ForceRestore,
    ForceTrip,
    Issue,
    LastCommand,
    LastModeCommand,
    Shadow,
    Skip,
    SkipCode,
    command_for,
    decide_balance,
    decide_operator,
    keep_power_command,
    keep_power_in_force,
    on_deferral_due,
    on_keep_power_changed,
    reconcile,
    reconcile_keep_power,
)
from shuidian_control.domain.policies import EstatePolicy, KeepPower, KeepPowerReason, MeterSupply
from shuidian_control.domain.windows import (
    SHANGHAI,
    Blackout,
    OperatorHold,
    ProtectedWindows,
    is_protected,
    next_allowed,
)
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandKind,
    CommandOrigin,
    MeterRef,
    RelayState,
    Utility,
)

CALENDAR = StatutoryCalendar()
K = CommandKind
S = SkipCode
EXHAUSTED = BalanceEventKind.EXHAUSTED
RESTORED = BalanceEventKind.RESTORED
OPEN = RelayState.OPEN
CLOSED = RelayState.CLOSED

ON = Shadow(CLOSED, CLOSED, 3)
OFF = Shadow(OPEN, OPEN, 4)
NEW = Shadow(None, None, 0)
HAND_CLOSED = Shadow(OPEN, CLOSED, 4)

ELEC = MeterSupply(Utility.ELECTRICITY)
WATER = MeterSupply(Utility.WATER)
ELDERLY = MeterSupply(Utility.ELECTRICITY, KeepPower(KeepPowerReason.ELDERLY, "lives alone, 86"))
MEDICAL = MeterSupply(Utility.ELECTRICITY, KeepPower(KeepPowerReason.MEDICAL, "home oxygen"))
ELDERLY_WATER = MeterSupply(Utility.WATER, KeepPower(KeepPowerReason.ELDERLY))

P = EstatePolicy()
P_ALLOWED = EstatePolicy(restore=K.CLOSE_ALLOWED)
P_WATER = EstatePolicy(prepaid_water=True)
P_ESTATE_KEEP = EstatePolicy(keep_power=KeepPower(KeepPowerReason.OTHER, "estate-wide during the typhoon"))
P_HOLD = EstatePolicy(windows=ProtectedWindows(hold=OperatorHold("cold wave")))


def at(stamp: str) -> datetime:
    """A Shanghai wall-clock stamp as an aware UTC instant."""
    return datetime.fromisoformat(stamp).replace(tzinfo=SHANGHAI).astimezone(UTC)


WED_NOON = at("2025-10-15 12:00")
WED_NIGHT = at("2025-10-15 23:00")
GUOQING = at("2025-10-03 12:00")
SPRING_EVE = at("2026-02-14 22:30")
UNKNOWN_YEAR = at("2027-03-03 10:00")


def summary(decision: Decision) -> tuple[str, object]:
    """Issue → command kind, Defer → local until, Skip → code: what the tables compare."""
    if isinstance(decision, Issue):
        return ("issue", decision.kind)
    if isinstance(decision, Defer):
        until = decision.until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if decision.until else None
        return ("defer", until)
    return ("skip", decision.code)


def issue(kind: CommandKind) -> tuple[str, object]:
    return ("issue", kind)


def defer(until: str | None) -> tuple[str, object]:
    return ("defer", until)


def skip(code: SkipCode) -> tuple[str, object]:
    return ("skip", code)


@pytest.mark.parametrize(
    ("kind", "sequence", "last", "shadow", "supply", "policy", "now", "expected"),
    [
        # Exhaustion trips once, outside protected windows, never under 保电.
        (EXHAUSTED, 5, 4, ON, ELEC, P, WED_NOON, issue(K.TRIP)),
        (EXHAUSTED, 5, None, ON, ELEC, P, WED_NOON, issue(K.TRIP)),
        (EXHAUSTED, 5, 4, NEW, ELEC, P, WED_NOON, issue(K.TRIP)),
        (EXHAUSTED, 5, 4, OFF, ELEC, P, WED_NOON, skip(S.ALREADY)),
        (EXHAUSTED, 5, 4, HAND_CLOSED, ELEC, P, WED_NOON, skip(S.ALREADY)),  # reconcile's job, not a new trip
        (EXHAUSTED, 5, 4, ON, ELEC, P, WED_NIGHT, defer("2025-10-16 07:00")),
        (EXHAUSTED, 5, 4, ON, ELEC, P, GUOQING, defer("2025-10-09 07:00")),
        (EXHAUSTED, 5, 4, ON, ELEC, P, SPRING_EVE, defer("2026-02-24 07:00")),
        (EXHAUSTED, 5, 4, ON, ELEC, P, at("2025-10-11 10:00"), issue(K.TRIP)),  # adjusted working Saturday
        (EXHAUSTED, 5, 4, ON, ELEC, P, at("2025-12-31 22:00"), defer("2026-01-04 07:00")),
        (EXHAUSTED, 5, 4, ON, ELEC, P_HOLD, WED_NOON, defer(None)),
        (EXHAUSTED, 5, 4, ON, ELEC, P, UNKNOWN_YEAR, defer("2027-05-03 00:00")),  # no calendar: keep deferring
        (EXHAUSTED, 5, 4, ON, ELDERLY, P, WED_NOON, skip(S.KEEP_POWER)),
        (EXHAUSTED, 5, 4, ON, MEDICAL, P, WED_NIGHT, skip(S.KEEP_POWER)),
        (EXHAUSTED, 5, 4, ON, ELEC, P_ESTATE_KEEP, WED_NOON, skip(S.KEEP_POWER)),
        # Restoration closes at once, windows and 保电 notwithstanding; never twice.
        (RESTORED, 6, 5, OFF, ELEC, P, WED_NOON, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, OFF, ELEC, P, WED_NIGHT, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, OFF, ELEC, P, GUOQING, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, OFF, ELEC, P_HOLD, WED_NOON, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, OFF, ELEC, P_ALLOWED, WED_NOON, issue(K.CLOSE_ALLOWED)),
        (RESTORED, 6, 5, OFF, ELDERLY, P, WED_NOON, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, NEW, ELEC, P, WED_NOON, issue(K.DIRECT_CLOSE)),
        (RESTORED, 6, 5, ON, ELEC, P, WED_NOON, skip(S.ALREADY)),  # a deferred trip never happened
        # Stale and duplicate events, and events that move no relay.
        (EXHAUSTED, 4, 4, ON, ELEC, P, WED_NOON, skip(S.STALE)),
        (EXHAUSTED, 3, 4, ON, ELEC, P, WED_NOON, skip(S.STALE)),
        (RESTORED, 4, 5, OFF, ELEC, P, WED_NOON, skip(S.STALE)),
        (BalanceEventKind.LOW_1, 6, 5, ON, ELEC, P, WED_NOON, skip(S.NOT_ACTIONABLE)),
        (BalanceEventKind.LOW_2, 6, 5, ON, ELEC, P, WED_NOON, skip(S.NOT_ACTIONABLE)),
        (BalanceEventKind.CHANGED, 6, 5, OFF, ELEC, P, WED_NOON, skip(S.NOT_ACTIONABLE)),
        # Water valves only where the estate prepays water.
        (EXHAUSTED, 5, 4, ON, WATER, P, WED_NOON, skip(S.NOT_PREPAID)),
        (RESTORED, 6, 5, OFF, WATER, P, WED_NOON, skip(S.NOT_PREPAID)),
        (EXHAUSTED, 5, 4, ON, WATER, P_WATER, WED_NOON, issue(K.VALVE_CLOSE)),
        (EXHAUSTED, 5, 4, ON, WATER, P_WATER, WED_NIGHT, defer("2025-10-16 07:00")),
        (EXHAUSTED, 5, 4, ON, ELDERLY_WATER, P_WATER, WED_NOON, skip(S.KEEP_POWER)),
        (RESTORED, 6, 5, OFF, WATER, P_WATER, WED_NIGHT, issue(K.VALVE_OPEN)),
    ],
)
def test_decide_balance(
    kind: BalanceEventKind,
    sequence: int,
    last: int | None,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    now: datetime,
    expected: tuple[str, object],
) -> None:
    decision = decide_balance(
        BalanceChange(kind, sequence),
        last_sequence=last,
        shadow=shadow,
        supply=supply,
        policy=policy,
        calendar=CALENDAR,
        now=now,
    )
    assert summary(decision) == expected
    assert decision.reason


def test_reasons_say_why() -> None:
    kept = decide_balance(
        BalanceChange(EXHAUSTED, 5),
        last_sequence=4,
        shadow=ON,
        supply=MEDICAL,
        policy=P,
        calendar=CALENDAR,
        now=WED_NOON,
    )
    assert "household keep-power (medical: home oxygen)" in kept.reason
    deferred = decide_balance(
        BalanceChange(EXHAUSTED, 5), last_sequence=4, shadow=ON, supply=ELEC, policy=P, calendar=CALENDAR, now=GUOQING
    )
    assert "holiday" in deferred.reason
    assert "2025-10-09 07:00" in deferred.reason


def test_balance_change_of_event() -> None:
    event = BalanceEvent(
        source="billing-test",
        account_id="acct-1",
        kind=EXHAUSTED,
        level=BalanceLevel.EXHAUSTED,
        balance=Decimal("-0.35"),
        sequence=12,
        meters=(MeterRef(meter_id="m-1", utility=Utility.ELECTRICITY),),
    )
    assert BalanceChange.of(event) == BalanceChange(EXHAUSTED, 12)


@pytest.mark.parametrize(
    ("level", "shadow", "supply", "policy", "now", "expected"),
    [
        (BalanceLevel.EXHAUSTED, ON, ELEC, P, WED_NOON, issue(K.TRIP)),
        (BalanceLevel.EXHAUSTED, ON, ELEC, P, at("2025-10-09 07:00"), issue(K.TRIP)),
        (BalanceLevel.OK, ON, ELEC, P, WED_NOON, skip(S.NOT_EXHAUSTED)),
        (BalanceLevel.LOW_1, ON, ELEC, P, WED_NOON, skip(S.NOT_EXHAUSTED)),
        (BalanceLevel.EXHAUSTED, ON, ELDERLY, P, WED_NOON, skip(S.KEEP_POWER)),  # 保电 set while deferred
        (BalanceLevel.EXHAUSTED, OFF, ELEC, P, WED_NOON, skip(S.ALREADY)),  # a second deferral for the same cut
        (
            BalanceLevel.EXHAUSTED,
            ON,
            ELEC,
            EstatePolicy(windows=ProtectedWindows(blackouts=(Blackout(WED_NOON, at("2025-10-15 18:00"), "exams"),))),
            WED_NOON,
            defer("2025-10-15 18:00"),  # a blackout added since the deferral was made
        ),
    ],
)
def test_on_deferral_due(
    level: BalanceLevel,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    now: datetime,
    expected: tuple[str, object],
) -> None:
    decision = on_deferral_due(level, shadow=shadow, supply=supply, policy=policy, calendar=CALENDAR, now=now)
    assert summary(decision) == expected


@pytest.mark.parametrize(
    ("level", "shadow", "supply", "policy", "now", "expected"),
    [
        (BalanceLevel.EXHAUSTED, OFF, MEDICAL, P, WED_NIGHT, issue(K.DIRECT_CLOSE)),  # 保电 set: power back now
        (BalanceLevel.EXHAUSTED, OFF, ELEC, P_ESTATE_KEEP, WED_NIGHT, issue(K.DIRECT_CLOSE)),
        (BalanceLevel.EXHAUSTED, ON, MEDICAL, P, WED_NOON, skip(S.ALREADY)),
        (BalanceLevel.EXHAUSTED, OFF, ELDERLY_WATER, P, WED_NOON, skip(S.NOT_PREPAID)),
        (BalanceLevel.EXHAUSTED, ON, ELEC, P, WED_NOON, issue(K.TRIP)),  # lifted while exhausted
        (BalanceLevel.EXHAUSTED, ON, ELEC, P, WED_NIGHT, defer("2025-10-16 07:00")),
        (BalanceLevel.OK, ON, ELEC, P, WED_NOON, skip(S.NOT_EXHAUSTED)),
    ],
)
def test_on_keep_power_changed(
    level: BalanceLevel,
    shadow: Shadow,
    supply: MeterSupply,
    policy: EstatePolicy,
    now: datetime,
    expected: tuple[str, object],
) -> None:
    decision = on_keep_power_changed(level, shadow=shadow, supply=supply, policy=policy, calendar=CALENDAR, now=now)
    assert summary(decision) == expected


@pytest.mark.parametrize(
    ("request_", "shadow", "supply", "policy", "expected"),
    [
        (ForceTrip("meter tampering"), ON, ELEC, P_HOLD, issue(K.TRIP)),  # windows and holds do not apply
        (ForceTrip("meter tampering"), HAND_CLOSED, ELEC, P, issue(K.TRIP)),
        (ForceTrip("meter tampering"), OFF, ELEC, P, skip(S.ALREADY)),
        (ForceTrip("meter tampering"), ON, ELDERLY, P, skip(S.KEEP_POWER)),
        (ForceTrip("meter tampering"), ON, ELEC, P_ESTATE_KEEP, skip(S.KEEP_POWER)),
        (ForceTrip("wiring fault", lift_keep_power=True), ON, ELDERLY, P, issue(K.TRIP)),
        (ForceTrip("leak in the riser"), ON, WATER, P, issue(K.VALVE_CLOSE)),  # not a billing cut
        (ForceRestore("emergency supply"), OFF, ELEC, P, issue(K.DIRECT_CLOSE)),
        (ForceRestore("emergency supply"), OFF, ELEC, P_ALLOWED, issue(K.CLOSE_ALLOWED)),
        (ForceRestore("emergency supply"), Shadow(CLOSED, OPEN, 2), ELEC, P, issue(K.DIRECT_CLOSE)),
        (ForceRestore("emergency supply"), ON, ELEC, P, skip(S.ALREADY)),
        (ForceRestore("leak fixed"), OFF, WATER, P, issue(K.VALVE_OPEN)),
    ],
)
def test_decide_operator(
    request_: ForcedSupply, shadow: Shadow, supply: MeterSupply, policy: EstatePolicy, expected: tuple[str, object]
) -> None:
    assert summary(decide_operator(request_, shadow=shadow, supply=supply, policy=policy)) == expected


def test_lifting_keep_power_is_on_the_record() -> None:
    decision = decide_operator(ForceTrip("wiring fault", lift_keep_power=True), shadow=ON, supply=ELDERLY, policy=P)
    assert "wiring fault" in decision.reason
    assert "household keep-power (elderly: lives alone, 86) lifted" in decision.reason


def sent(
    target: RelayState,
    version: int,
    minutes_ago: int,
    *,
    finished: bool = True,
    origin: CommandOrigin = CommandOrigin.BILLING,
    now: datetime = WED_NOON,
) -> LastCommand:
    issued = now - timedelta(minutes=minutes_ago)
    return LastCommand(target, version, issued, issued + timedelta(minutes=10), finished, origin)


@pytest.mark.parametrize(
    ("shadow", "now", "last", "supply", "expected"),
    [
        (NEW, WED_NOON, None, ELEC, skip(S.NO_INTENT)),
        (ON, WED_NOON, sent(CLOSED, 3, 60), ELEC, skip(S.CONVERGED)),
        (Shadow(OPEN, None, 4), WED_NOON, sent(OPEN, 4, 60), ELEC, skip(S.REPORTED_UNKNOWN)),
        (Shadow(OPEN, RelayState.UNKNOWN, 4), WED_NOON, sent(OPEN, 4, 60), ELEC, skip(S.REPORTED_UNKNOWN)),
        (HAND_CLOSED, WED_NOON, sent(CLOSED, 5, 1), ELEC, skip(S.STALE_INTENT)),  # a newer intent exists
        # Lost close after a reconnect: re-sent at once, even at night.
        (Shadow(CLOSED, OPEN, 5), WED_NIGHT, sent(CLOSED, 5, 30, now=WED_NIGHT), ELEC, issue(K.DIRECT_CLOSE)),
        (Shadow(CLOSED, OPEN, 5), WED_NOON, None, ELEC, issue(K.DIRECT_CLOSE)),
        # Hand-closed relay: re-tripped, but only outside protected windows and never under 保电.
        (HAND_CLOSED, WED_NOON, sent(OPEN, 4, 60), ELEC, issue(K.TRIP)),
        (HAND_CLOSED, WED_NIGHT, sent(OPEN, 4, 60, now=WED_NIGHT), ELEC, defer("2025-10-16 07:00")),
        (HAND_CLOSED, GUOQING, sent(OPEN, 4, 60, now=GUOQING), ELEC, defer("2025-10-09 07:00")),
        (HAND_CLOSED, WED_NOON, sent(OPEN, 4, 60), MEDICAL, skip(S.KEEP_POWER)),
        # An operator's forced trip keeps its exemption when re-sent; an older one does not.
        (HAND_CLOSED, WED_NIGHT, sent(OPEN, 4, 60, origin=CommandOrigin.OPERATOR, now=WED_NIGHT), ELEC, issue(K.TRIP)),
        (
            HAND_CLOSED,
            WED_NIGHT,
            sent(OPEN, 3, 60, origin=CommandOrigin.OPERATOR, now=WED_NIGHT),
            ELEC,
            defer("2025-10-16 07:00"),
        ),
        # In flight or too soon: look again later.
        (HAND_CLOSED, WED_NOON, sent(OPEN, 4, 2, finished=False), ELEC, defer("2025-10-15 12:08")),
        (HAND_CLOSED, WED_NOON, sent(OPEN, 4, 2), ELEC, defer("2025-10-15 12:03")),
        (HAND_CLOSED, WED_NOON, sent(OPEN, 4, 12, finished=False), ELEC, issue(K.TRIP)),  # TTL passed: lost
        (Shadow(CLOSED, OPEN, 5), WED_NOON, sent(OPEN, 4, 1), ELEC, defer("2025-10-15 12:04")),
        (Shadow(OPEN, OPEN, 4), WED_NOON, sent(OPEN, 4, 1), ELEC, skip(S.CONVERGED)),
        (Shadow(OPEN, CLOSED, 4), WED_NOON, sent(OPEN, 4, 60), WATER, issue(K.VALVE_CLOSE)),
    ],
)
def test_reconcile(
    shadow: Shadow, now: datetime, last: LastCommand | None, supply: MeterSupply, expected: tuple[str, object]
) -> None:
    decision = reconcile(shadow, now, last, supply=supply, policy=P, calendar=CALENDAR)
    assert summary(decision) == expected


@pytest.mark.parametrize(
    ("utility", "in_force", "desired", "expected"),
    [
        (Utility.ELECTRICITY, True, None, K.KEEP_POWER_ON),
        (Utility.ELECTRICITY, True, False, K.KEEP_POWER_ON),
        (Utility.ELECTRICITY, True, True, None),
        (Utility.ELECTRICITY, False, True, K.KEEP_POWER_OFF),
        (Utility.ELECTRICITY, False, False, None),
        (Utility.ELECTRICITY, False, None, None),  # never had it from control: no KEEP_POWER_OFF for every meter
        (Utility.WATER, True, None, None),
        (Utility.WATER, False, True, None),
    ],
)
def test_keep_power_command(utility: Utility, in_force: bool, desired: bool | None, expected: K | None) -> None:
    assert keep_power_command(utility, in_force, desired) is expected


def test_keep_power_in_force_household_first_then_estate() -> None:
    assert keep_power_in_force(ELEC, P) is None
    assert "household" in (keep_power_in_force(MEDICAL, P_ESTATE_KEEP) or "")
    assert "estate" in (keep_power_in_force(ELEC, P_ESTATE_KEEP) or "")


def mode_sent(keep_power: bool, minutes_ago: int, *, finished: bool = True) -> LastModeCommand:
    issued = WED_NOON - timedelta(minutes=minutes_ago)
    return LastModeCommand(keep_power, issued, issued + timedelta(minutes=10), finished)


@pytest.mark.parametrize(
    ("desired", "reported", "last", "expected"),
    [
        (None, False, None, skip(S.NO_INTENT)),
        (True, None, mode_sent(True, 60), skip(S.REPORTED_UNKNOWN)),
        (True, True, mode_sent(True, 60), skip(S.CONVERGED)),
        (False, False, None, skip(S.CONVERGED)),
        # A replaced meter (or a lost command): sent again, in both directions.
        (True, False, mode_sent(True, 60), issue(K.KEEP_POWER_ON)),
        (True, False, None, issue(K.KEEP_POWER_ON)),
        (False, True, mode_sent(False, 60), issue(K.KEEP_POWER_OFF)),
        # In flight or too soon: look again later; a lost one past its TTL is re-sent.
        (True, False, mode_sent(True, 2, finished=False), defer("2025-10-15 12:08")),
        (True, False, mode_sent(True, 2), defer("2025-10-15 12:03")),
        (True, False, mode_sent(False, 1, finished=False), defer("2025-10-15 12:04")),  # an older intent, too soon
        (True, False, mode_sent(True, 12, finished=False), issue(K.KEEP_POWER_ON)),
    ],
)
def test_reconcile_keep_power(
    desired: bool | None, reported: bool | None, last: LastModeCommand | None, expected: tuple[str, object]
) -> None:
    decision = reconcile_keep_power(desired, reported, WED_NOON, last)
    assert summary(decision) == expected


def test_command_for_and_supply_agree() -> None:
    for utility in Utility:
        for target in (OPEN, CLOSED):
            for restore in (K.DIRECT_CLOSE, K.CLOSE_ALLOWED):
                assert Issue(command_for(target, utility, restore), "x").supply is target
    with pytest.raises(ValueError, match="unknown"):
        command_for(RelayState.UNKNOWN, Utility.ELECTRICITY, K.DIRECT_CLOSE)
    with pytest.raises(ValueError, match="restore"):
        EstatePolicy(restore=K.TRIP)


KEEPS = st.none() | st.sampled_from(list(KeepPowerReason)).map(KeepPower)


@settings(deadline=None, max_examples=300)
@given(
    start=st.datetimes(datetime(2025, 1, 1), datetime(2026, 6, 1), timezones=st.just(UTC)),  # noqa: DTZ001
    data=st.data(),
)
def test_random_interleavings_honour_keep_power_and_hysteresis(start: datetime, data: st.DataObject) -> None:
    now = start
    sequence, last_sequence, level = 0, None, BalanceLevel.OK
    shadow = NEW
    household: KeepPower | None = None
    estate: KeepPower | None = None
    pending: list[datetime] = []
    intents: list[RelayState] = []
    last: LastCommand | None = None

    def kept() -> bool:
        return household is not None or estate is not None

    def context() -> tuple[MeterSupply, EstatePolicy]:
        return MeterSupply(Utility.ELECTRICITY, household), EstatePolicy(keep_power=estate)

    def apply(decision: Decision, *, reissue: bool = False) -> None:
        nonlocal shadow, last
        if isinstance(decision, Defer) and reissue:
            return  # a reconcile that must wait is retried by the reconcile loop, not as a deferred trip
        if isinstance(decision, Defer):
            assert decision.until is not None
            assert decision.until > now
            assert is_protected(decision.until, EstatePolicy().windows, CALENDAR) is None
            pending.append(decision.until)
            return
        if isinstance(decision, Skip):
            return
        if decision.supply is OPEN:
            assert not kept(), "tripped a keep-power household"
            assert is_protected(now, EstatePolicy().windows, CALENDAR) is None, "tripped in a protected window"
        if reissue:
            assert decision.supply is shadow.desired, "reconcile changed the intent"
        else:
            assert decision.supply is not shadow.desired
            intents.append(decision.supply)
            shadow = Shadow(decision.supply, shadow.reported, shadow.version + 1)
        lost = data.draw(st.booleans(), label="command lost")
        last = LastCommand(decision.supply, shadow.version, now, now + timedelta(minutes=10), not lost)
        if not lost:
            shadow = Shadow(shadow.desired, decision.supply, shadow.version)

    def run_due(until: datetime) -> None:
        nonlocal now
        while due := sorted(t for t in pending if t <= until):
            pending.remove(due[0])
            now = due[0]
            supply, policy = context()
            apply(on_deferral_due(level, shadow=shadow, supply=supply, policy=policy, calendar=CALENDAR, now=now))
        now = until

    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        action = data.draw(st.sampled_from(["exhausted", "restored", "stale", "household", "estate", "wait", "hand"]))
        supply, policy = context()
        if action in ("exhausted", "restored"):
            sequence += data.draw(st.integers(1, 3))
            kind = EXHAUSTED if action == "exhausted" else RESTORED
            decision = decide_balance(
                BalanceChange(kind, sequence),
                last_sequence=last_sequence,
                shadow=shadow,
                supply=supply,
                policy=policy,
                calendar=CALENDAR,
                now=now,
            )
            last_sequence = sequence
            level = BalanceLevel.EXHAUSTED if kind is EXHAUSTED else BalanceLevel.OK
            apply(decision)
        elif action == "stale" and last_sequence is not None:
            old = BalanceChange(
                data.draw(st.sampled_from([EXHAUSTED, RESTORED])), data.draw(st.integers(0, last_sequence))
            )
            decision = decide_balance(
                old,
                last_sequence=last_sequence,
                shadow=shadow,
                supply=supply,
                policy=policy,
                calendar=CALENDAR,
                now=now,
            )
            assert isinstance(decision, Skip)
            assert decision.code is SkipCode.STALE
        elif action in ("household", "estate"):
            if action == "household":
                household = data.draw(KEEPS)
            else:
                estate = data.draw(KEEPS)
            supply, policy = context()
            apply(on_keep_power_changed(level, shadow=shadow, supply=supply, policy=policy, calendar=CALENDAR, now=now))
        elif action == "wait":
            run_due(now + timedelta(minutes=data.draw(st.integers(1, 2 * 24 * 60))))
        elif action == "hand":
            # The tenant closes the relay by hand (or the meter comes back with another state), then reconcile runs.
            shadow = Shadow(shadow.desired, data.draw(st.sampled_from([OPEN, CLOSED])), shadow.version)
            apply(reconcile(shadow, now, last, supply=supply, policy=policy, calendar=CALENDAR), reissue=True)

    # Hysteresis: intents alternate, never two trips or two closes in a row.
    assert all(a is not b for a, b in pairwise(intents))
    # Liveness: once every deferral has fallen due, the intent follows the balance and 保电.
    while pending:
        run_due(max(pending))
    run_due(next_allowed(now, EstatePolicy().windows, CALENDAR))
    if kept():
        assert shadow.desired is not OPEN
    elif level is BalanceLevel.EXHAUSTED:
        assert shadow.desired is OPEN
    else:
        assert shadow.desired is not OPEN
