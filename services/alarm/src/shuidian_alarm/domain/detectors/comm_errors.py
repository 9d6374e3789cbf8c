"""Communication errors: a meter that still answers but fails too many polls over a sliding window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Decision, Raise
from shuidian_alarm.domain.detectors.debounce import DebounceState, Evidence, debounce, edge
from shuidian_alarm.domain.observations import Feeds, PollWindow
from shuidian_alarm.domain.times import FUTURE_TOLERANCE, HOUR, ZERO, iso, minutes
from shuidian_shared.messages import AlarmSeverity

COMM_ERRORS: Final = "comm_errors"


@dataclass(frozen=True, kw_only=True)
class CommErrorRule:
    """Failed polls of a meter that still answers sometimes, above `raise_rate` over a sliding `window`; cleared
    at or below `clear_rate` (hysteresis: in between nothing changes).

    The collector reports counts per poll window (`PollWindow`), not one observation per poll. A window already
    counted, or one overlapping a counted window, is ignored: a redelivered or re-cut window would count the
    same polls twice. Windows may arrive out of order; one ending before the sliding window is ignored. Over a
    sliding window in which every poll failed nothing is decided here: a dead meter is the offline rule's
    alarm. Windows in which the gateway itself was down do not count either.
    """

    kind: Literal["comm_error"] = "comm_error"
    window: timedelta = HOUR
    raise_rate: Decimal = Decimal("0.2")
    clear_rate: Decimal = Decimal("0.05")
    min_attempts: int = 6
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = COMM_ERRORS  # the alarm type it raises; a more specific scope overrides it
    feeds: ClassVar[Feeds] = (PollWindow,)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes

    def __post_init__(self) -> None:
        if not self.clear_rate <= self.raise_rate:
            raise ValueError("clear_rate must not exceed raise_rate")


@dataclass(frozen=True, kw_only=True)
class PollCount:
    """Polls and failures of one counted window [start, end)."""

    start: datetime
    end: datetime
    attempts: int
    failures: int


@dataclass(frozen=True, kw_only=True)
class CommErrorState:
    """The windows counted inside the sliding window (oldest first), the newest window end, and the alarm."""

    kind: Literal["comm_error"] = "comm_error"
    counts: tuple[PollCount, ...] = ()
    last_at: datetime | None = None
    alarm: DebounceState = DebounceState()  # noqa: RUF009 (frozen: one shared default)


def on_poll(
    rule: CommErrorRule, state: CommErrorState, poll: PollWindow, now: datetime
) -> tuple[CommErrorState, list[Decision]]:
    if poll.gateway_down or poll.end > now + FUTURE_TOLERANCE:
        return state, []
    newest = poll.end if state.last_at is None else max(state.last_at, poll.end)
    if poll.end <= newest - rule.window or any(c.start < poll.end and poll.start < c.end for c in state.counts):
        return state, []
    counted = PollCount(start=poll.start, end=poll.end, attempts=poll.attempts, failures=poll.failures)
    counts = tuple(sorted([*(c for c in state.counts if c.end > newest - rule.window), counted], key=lambda c: c.start))
    attempts, failures = sum(c.attempts for c in counts), sum(c.failures for c in counts)
    rate = Decimal(failures) / attempts if attempts else Decimal(0)
    if attempts < rule.min_attempts or failures == attempts:
        evidence = Evidence.NONE
    elif rate > rule.raise_rate:
        evidence = Evidence.TRIGGER
    else:
        evidence = Evidence.RELEASE if rate <= rule.clear_rate else Evidence.HOLD
    alarm = debounce(state.alarm, newest, evidence, ZERO, ZERO, None)
    percent = f"{(rate * 100).quantize(Decimal('0.1'))}"

    def raised() -> Raise:
        return Raise(
            poll.meter_id,
            COMM_ERRORS,
            rule.severity,
            f"通信不稳定：近 {minutes(rule.window)} 分钟抄读失败率 {percent}%（{failures}/{attempts}）",
            f"Unreliable communication: {percent}% of polls failed in the last {minutes(rule.window)} min ({failures}/{attempts})",
            {"failures": f"{failures}", "attempts": f"{attempts}", "rate": percent, "at": iso(newest)},
        )

    new = CommErrorState(counts=counts, last_at=newest, alarm=alarm)
    return new, edge(state.alarm.active, alarm.active, raised, poll.meter_id, COMM_ERRORS)
