"""Balance mismatch: the meter's own remaining-money register against the server balance of its account."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final, Literal

from shuidian_alarm.domain.decisions import Decision, Raise
from shuidian_alarm.domain.detectors.debounce import DebounceState, Evidence, debounce, edge
from shuidian_alarm.domain.observations import Feeds, Observation, ServerBalance
from shuidian_alarm.domain.times import ZERO, fresh
from shuidian_shared.messages import AlarmSeverity, Reading

METER_BALANCE: Final = "balance_money"  # CNY, the meter's own remaining-money register
BALANCE_MISMATCH: Final = "balance_mismatch"


@dataclass(frozen=True, kw_only=True)
class BalanceMismatchRule:
    """The meter's remaining-money register and the server balance differ by more than `tolerance` for `grace`.

    Billing posts consumption hourly while the meter deducts as it goes, so `grace` must outlast a posting
    interval. Negative balances compare as zero: a meter register stops at zero where the ledger goes on.
    """

    kind: Literal["balance_mismatch"] = "balance_mismatch"
    tolerance: Decimal = Decimal("1.00")
    grace: timedelta = timedelta(hours=2)
    clear_after: timedelta = ZERO
    severity: AlarmSeverity = AlarmSeverity.WARNING
    slot: ClassVar[str] = BALANCE_MISMATCH  # the alarm type it raises; a more specific scope overrides it
    feeds: ClassVar[Feeds] = (ServerBalance, Reading)  # the observations whose meter it judges
    ticks: ClassVar[bool] = False  # judged only when an observation comes


@dataclass(frozen=True, kw_only=True)
class BalanceMismatchState:
    """The newest meter register and server balance with their times, and the alarm."""

    kind: Literal["balance_mismatch"] = "balance_mismatch"
    meter_balance: Decimal | None = None
    meter_at: datetime | None = None
    server_balance: Decimal | None = None
    server_at: datetime | None = None
    alarm: DebounceState = DebounceState()  # noqa: RUF009 (frozen: one shared default)


def on_balances(
    rule: BalanceMismatchRule, state: BalanceMismatchState, observation: Observation, now: datetime
) -> tuple[BalanceMismatchState, list[Decision]]:
    # States are built directly (not `replace`): this runs on every reading with a remaining-money register.
    if isinstance(observation, Reading):
        value = observation.registers.get(METER_BALANCE)
        if value is None or not fresh(state.meter_at, observation.sampled_at, now):
            return state, []
        new = BalanceMismatchState(
            meter_balance=value,
            meter_at=observation.sampled_at,
            server_balance=state.server_balance,
            server_at=state.server_at,
            alarm=state.alarm,
        )
    elif isinstance(observation, ServerBalance):
        if not fresh(state.server_at, observation.at, now):
            return state, []
        new = BalanceMismatchState(
            meter_balance=state.meter_balance,
            meter_at=state.meter_at,
            server_balance=observation.balance,
            server_at=observation.at,
            alarm=state.alarm,
        )
    else:
        return state, []
    if new.meter_balance is None or new.server_balance is None or new.meter_at is None or new.server_at is None:
        return new, []
    meter, server = max(new.meter_balance, Decimal(0)), max(new.server_balance, Decimal(0))
    evidence = Evidence.TRIGGER if abs(meter - server) > rule.tolerance else Evidence.RELEASE
    at = max(new.meter_at, new.server_at)
    alarm = debounce(new.alarm, at, evidence, rule.grace, rule.clear_after, None)

    def raised() -> Raise:
        return Raise(
            observation.meter_id,
            BALANCE_MISMATCH,
            rule.severity,
            f"表内余额 {new.meter_balance} 元与系统余额 {new.server_balance} 元不一致",
            f"Meter balance {new.meter_balance} CNY disagrees with the server balance {new.server_balance} CNY",
            {"meter_balance": f"{new.meter_balance}", "server_balance": f"{new.server_balance}"},
        )

    if alarm is not new.alarm:
        new = replace(new, alarm=alarm)
    return new, edge(state.alarm.active, alarm.active, raised, observation.meter_id, BALANCE_MISMATCH)
