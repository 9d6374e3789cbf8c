"""An estate's cut-off policy and 保电 (keep-power) flags, and how the stored settings become the policy decided with.

Control does not own premises: a meter in no registered building belongs to the estate `default`; an estate
without a stored policy uses the default estate's, else the one from the settings. The operator's no-cut-off
switch for one estate and the one for all estates (`*`) combine into the longer of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum

from shuidian_control.domain.windows import (
    DEFAULT_HORIZON,
    SHANGHAI,
    DailyWindow,
    OperatorHold,
    ProtectedWindows,
)
from shuidian_shared.messages import CommandKind, Utility

DEFAULT_ESTATE = "default"
ALL_ESTATES = "*"
_RESTORE_KINDS = frozenset({CommandKind.DIRECT_CLOSE, CommandKind.CLOSE_ALLOWED})
_DEFAULT_WINDOWS = ProtectedWindows()


class KeepPowerReason(StrEnum):
    """Why a household or estate is under 保电."""

    ELDERLY = "elderly"
    MEDICAL = "medical"
    OTHER = "other"


@dataclass(frozen=True)
class KeepPower:
    """A 保电 flag: supply stays on whatever the balance until an operator lifts it."""

    reason: KeepPowerReason
    note: str = ""

    def describe(self) -> str:
        """Reason and note, for audit text."""
        return f"{self.reason.value}: {self.note}" if self.note else self.reason.value


@dataclass(frozen=True)
class MeterSupply:
    """The meter a decision is about and its household's 保电 flag."""

    utility: Utility
    keep_power: KeepPower | None = None


@dataclass(frozen=True)
class EstatePolicy:
    """An estate's cut-off policy: protected windows, how supply comes back, prepaid water, estate-wide 保电."""

    windows: ProtectedWindows = _DEFAULT_WINDOWS
    restore: CommandKind = CommandKind.DIRECT_CLOSE
    prepaid_water: bool = False
    keep_power: KeepPower | None = None
    tz: tzinfo = SHANGHAI
    horizon: timedelta = DEFAULT_HORIZON

    def __post_init__(self) -> None:
        if self.restore not in _RESTORE_KINDS:
            raise ValueError(f"restore must be one of {sorted(_RESTORE_KINDS)}, not {self.restore}")


@dataclass(frozen=True)
class EstateSettings:
    """An estate's stored policy, as the API reads and writes it."""

    nights_start: time | None
    nights_end: time | None
    weekends: bool
    holidays: bool
    restore: CommandKind
    prepaid_water: bool


@dataclass(frozen=True)
class MeterContext:
    """Everything a decision about one meter needs from the policy tables."""

    meter_id: str
    estate_id: str
    account_id: str | None
    supply: MeterSupply
    policy: EstatePolicy


def estate_policy(
    settings: EstateSettings, keep: KeepPower | None, hold: OperatorHold | None, tz: tzinfo
) -> EstatePolicy:
    """The policy decided with: the stored settings, the estate's 保电 flag and the no-cut-off switch in force."""
    nights = (
        DailyWindow(settings.nights_start, settings.nights_end)
        if settings.nights_start is not None and settings.nights_end is not None
        else None
    )
    windows = ProtectedWindows(nights=nights, weekends=settings.weekends, holidays=settings.holidays, hold=hold)
    return EstatePolicy(
        windows=windows, restore=settings.restore, prepaid_water=settings.prepaid_water, keep_power=keep, tz=tz
    )


def longest_hold(*holds: OperatorHold | None) -> OperatorHold | None:
    """Of an estate's own hold and the all-estates hold, the one that lasts longer (open-ended wins)."""
    present = [h for h in holds if h is not None]
    if not present:
        return None
    for hold in present:
        if hold.until is None:
            return hold
    return max(present, key=lambda h: h.until or datetime.min.replace(tzinfo=UTC))
