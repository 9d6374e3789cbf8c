"""The pure rules outside the detectors, table by table: work-order transitions, what a delivery attempt leads to,
history cursors, and the status each error answers with. No database, no broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from shuidian_alarm import errors
from shuidian_alarm.domain.alarms import decode_cursor, encode_cursor
from shuidian_alarm.domain.detectors.thresholds import Measure, ThresholdRule
from shuidian_alarm.domain.notify.delivery import DeliveryResult, RetryPolicy, first_due, next_attempt
from shuidian_alarm.domain.notify.preferences import TenantSettings, served_with_phone
from shuidian_alarm.domain.rules import RuleSet, ScopedRule, StoredRule
from shuidian_alarm.domain.scopes import RuleScope, ScopeLevel, ScopeTarget
from shuidian_alarm.domain.work_orders import plan_update
from shuidian_alarm.errors import AlarmError, InvalidQuery, InvalidTransition
from shuidian_shared.messages import AlarmSeverity

NOW = datetime(2026, 3, 1, 8, tzinfo=UTC)

# (current status, current assignee, requested status, assignee, note, closing cause) → (new status, journal)
MOVES = [
    ("open", None, None, "li", None, None, "assigned", ["open → assigned", "指派给 · assigned to li"]),
    ("open", None, "closed", None, None, "duplicate", "closed", ["open → closed"]),
    ("assigned", "li", "in_progress", None, "on my way", None, "in_progress", ["assigned → in_progress", "on my way"]),
    ("assigned", "li", None, "wang", None, None, "assigned", ["指派给 · assigned to wang"]),
    ("in_progress", "li", "resolved", None, None, None, "resolved", ["in_progress → resolved"]),
    (
        "resolved",
        "li",
        "in_progress",
        None,
        "leaks again",
        None,
        "in_progress",
        ["resolved → in_progress", "leaks again"],
    ),
    ("resolved", "li", "closed", None, None, "seal replaced", "closed", ["resolved → closed"]),
    ("closed", "li", None, None, "checked a month later", None, "closed", ["checked a month later"]),
]


@pytest.mark.parametrize(("current", "held", "status", "assignee", "note", "cause", "target", "journal"), MOVES)
def test_a_work_order_moves_as_its_status_allows_and_says_so(
    current: str,
    held: str | None,
    status: str | None,
    assignee: str | None,
    note: str | None,
    cause: str | None,
    target: str,
    journal: list[str],
) -> None:
    moved = plan_update(current, held, status=status, assignee=assignee, note=note, closing_cause=cause)
    assert moved == (target, journal)


# (current status, current assignee, requested status, assignee, closing cause) → what the refusal says
REFUSED = [
    ("open", None, "in_progress", None, None, "cannot go from open to in_progress"),
    ("open", None, "resolved", None, None, "cannot go from open to resolved"),
    ("in_progress", "li", "open", None, None, "cannot go from in_progress to open"),
    ("closed", "li", "open", None, None, "cannot go from closed to open"),
    ("closed", "li", None, "wang", None, "closed work order is not changed"),
    ("closed", "li", None, None, "late cause", "closed work order is not changed"),
    ("open", None, "assigned", None, None, "assigning needs an assignee"),
    ("in_progress", "li", "closed", None, None, "closing needs a closing cause"),
]


@pytest.mark.parametrize(("current", "held", "status", "assignee", "cause", "says"), REFUSED)
def test_a_work_order_refuses_a_move_its_status_does_not_allow(
    current: str, held: str | None, status: str | None, assignee: str | None, cause: str | None, says: str
) -> None:
    with pytest.raises(InvalidTransition, match=says):
        plan_update(current, held, status=status, assignee=assignee, note=None, closing_cause=cause)


RETRY = RetryPolicy(max_attempts=3, base=timedelta(seconds=5), cap=timedelta(seconds=12))
OUTCOMES = [
    (DeliveryResult(True, status_code=200), 1, ("delivered", NOW, "delivered")),
    (DeliveryResult(True, status_code=200), 3, ("delivered", NOW, "delivered")),
    (DeliveryResult(False, True, 503), 1, ("pending", NOW + timedelta(seconds=5), "retry")),
    (DeliveryResult(False, True, 503), 2, ("pending", NOW + timedelta(seconds=10), "retry")),
    (DeliveryResult(False, True, 503), 3, ("dead", NOW, "dead")),  # the attempt limit
    (DeliveryResult(False, False, 404), 1, ("dead", NOW, "dead")),  # retrying cannot help
]


@pytest.mark.parametrize(("result", "attempt", "then"), OUTCOMES)
def test_a_delivery_attempt_leads_to_delivered_retry_or_dead(
    result: DeliveryResult, attempt: int, then: tuple[str, datetime, str]
) -> None:
    assert next_attempt(result, attempt, RETRY, NOW) == then


SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = datetime(2026, 3, 1, 23, 30, tzinfo=SHANGHAI)  # inside 22:00-07:00 local
DAY = datetime(2026, 3, 1, 12, 0, tzinfo=SHANGHAI)
MORNING = datetime(2026, 3, 2, 7, 0, tzinfo=SHANGHAI)
QUIET_HOURS = [
    (AlarmSeverity.WARNING, NIGHT, (time(22), time(7)), MORNING),  # held until the quiet hours end
    (AlarmSeverity.MAJOR, NIGHT, (time(22), time(7)), MORNING),
    (AlarmSeverity.CRITICAL, NIGHT, (time(22), time(7)), NIGHT),  # never held
    (AlarmSeverity.WARNING, DAY, (time(22), time(7)), DAY),  # outside them
    (AlarmSeverity.WARNING, NIGHT, (None, None), NIGHT),  # no quiet hours
    (AlarmSeverity.WARNING, NIGHT, (time(22), time(22)), NIGHT),  # an empty window
]


@pytest.mark.parametrize(("severity", "now", "window", "due"), QUIET_HOURS)
def test_a_notification_waits_out_quiet_hours_unless_critical(
    severity: AlarmSeverity, now: datetime, window: tuple[time | None, time | None], due: datetime
) -> None:
    assert first_due(severity, now, window[0], window[1], "Asia/Shanghai") == due


def test_back_off_doubles_up_to_its_cap() -> None:
    assert [RETRY.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 12, 12]


def test_a_history_cursor_reads_back_and_a_forged_one_is_refused() -> None:
    alarm_id = uuid.uuid4()
    assert decode_cursor(encode_cursor(NOW, alarm_id)) == (NOW, alarm_id)
    for forged in ("not-a-cursor", encode_cursor(NOW, alarm_id)[:-8], "MjAyNnxub3QtYS11dWlk"):
        with pytest.raises(InvalidQuery):
            decode_cursor(forged)


ANSWERS = [
    (errors.AlarmError, 400, "bad_request"),
    (errors.NotFound, 404, "not_found"),
    (errors.Conflict, 409, "conflict"),
    (errors.InvalidTransition, 409, "invalid_transition"),
    (errors.VersionConflict, 409, "version_conflict"),
    (errors.Invalid, 422, "invalid_request"),
    (errors.InvalidRule, 422, "invalid_rule"),
    (errors.InvalidQuery, 422, "invalid_query"),
    (errors.InvalidSettings, 422, "invalid_settings"),
]


@pytest.mark.parametrize(("error", "status", "code"), ANSWERS)
def test_every_alarm_error_answers_with_its_status_and_code(error: type[AlarmError], status: int, code: str) -> None:
    raised = error("why")
    assert isinstance(raised, AlarmError)
    assert (raised.status_code, raised.code, raised.detail) == (status, code, "why")


def test_a_rule_set_puts_stored_rules_over_the_defaults_most_specific_first() -> None:
    everywhere, meter = RuleScope(level=ScopeLevel.DEFAULT), RuleScope(level=ScopeLevel.METER, key="m-1")
    default = ThresholdRule(measure=Measure.OVER_VOLTAGE, limit=Decimal("235.4"))
    estate_wide = ThresholdRule(measure=Measure.OVER_VOLTAGE, limit=Decimal("240"))
    one_meter = ThresholdRule(measure=Measure.OVER_VOLTAGE, limit=Decimal("250"))
    current = ThresholdRule(measure=Measure.OVER_CURRENT, limit=Decimal("60"))
    rule_set = RuleSet(
        [ScopedRule(scope=everywhere, rule=default), ScopedRule(scope=everywhere, rule=current)],
        [
            StoredRule(everywhere, "over_voltage", True, estate_wide, NOW),
            StoredRule(meter, "over_voltage", True, one_meter, NOW),
            StoredRule(meter, "over_current", False, current, NOW),
        ],
    )
    # The stored default-scope rule replaces the built-in one: the built-in is no longer listed.
    assert [(e.slot, e.rule, e.updated_at is None) for e in rule_set.entries()] == [
        ("over_current", current, True),
        ("over_voltage", estate_wide, False),
        ("over_voltage", one_meter, False),
        ("over_current", current, False),
    ]
    assert rule_set.rules_for(ScopeTarget(meter_id="m-2")) == {"over_current": current, "over_voltage": estate_wide}
    # The meter's own rule wins, and its switched-off slot is gone for it alone.
    assert rule_set.rules_for(ScopeTarget(meter_id="m-1")) == {"over_voltage": one_meter}
    assert rule_set.rules_for(ScopeTarget(meter_id="m-1")) is rule_set.rules_for(ScopeTarget(meter_id="m-1"))


PHONES = [
    (("app", "sms"), "13800000000", ("app", "sms")),
    (("app", "sms"), "+8613800000000", ("app", "sms")),
    (("app", "sms"), None, ("app",)),  # billing has no phone any more
    (("sms", "email"), "", ("email",)),
    (("sms",), "not a phone", ()),
    (("app", "email"), None, ("app", "email")),  # no SMS chosen: nothing to stop
]


@pytest.mark.parametrize(("chosen", "phone", "served"), PHONES)
def test_sms_is_served_only_with_a_usable_phone(
    chosen: tuple[str, ...], phone: str | None, served: tuple[str, ...]
) -> None:
    settings = TenantSettings(channels=chosen, quiet_hours="22:00-07:00")
    assert served_with_phone(settings, phone) == TenantSettings(channels=served, quiet_hours="22:00-07:00")
