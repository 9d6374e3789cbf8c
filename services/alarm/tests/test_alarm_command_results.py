"""The collector's command outcomes as alarm decisions: which ones need staff (raise) and which settle (clear)."""

from __future__ import annotations

import uuid

import pytest

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.events import COMMAND_FAILED, on_command_result
from shuidian_shared.messages import AlarmSeverity, CommandKind, CommandResult, CommandStatus

METER = "E-0101"


def result(status: CommandStatus, detail: str = "") -> CommandResult:
    return CommandResult(
        source="collector-test",
        command_id=uuid.UUID(int=7),
        meter_id=METER,
        kind=CommandKind.PARAMETER_WRITE,
        status=status,
        detail=detail,
    )


def test_a_rejected_command_raises_command_failed_in_both_languages() -> None:
    detail = "值超出范围 · value out of range: alarm_limit_1=-5"
    (decision,) = on_command_result(result(CommandStatus.REJECTED, detail))
    assert isinstance(decision, Raise)
    assert (decision.source_id, decision.alarm_type, decision.severity) == (
        METER,
        COMMAND_FAILED,
        AlarmSeverity.MAJOR,
    )
    assert decision.message_zh == f"表计命令 parameter_write 被采集服务拒绝，未下发，需人工处理：{detail}"
    assert decision.message_en == (
        f"Meter command parameter_write rejected by the collector before sending, needs staff action: {detail}"
    )
    assert decision.details == {"command_id": str(uuid.UUID(int=7)), "status": "rejected"}


@pytest.mark.parametrize("status", [CommandStatus.FAILED, CommandStatus.EXPIRED])
def test_failed_and_expired_still_raise(status: CommandStatus) -> None:
    (decision,) = on_command_result(result(status, "no answer"))
    assert isinstance(decision, Raise)
    assert decision.alarm_type == COMMAND_FAILED
    assert decision.message_en == f"Meter command parameter_write {status.value}: no answer"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (CommandStatus.CONFIRMED, [Clear(METER, COMMAND_FAILED)]),
        # Control fails an unsupported command itself; its CommandUpdate raises (on_command_update).
        (CommandStatus.UNSUPPORTED, []),
        (CommandStatus.ACKNOWLEDGED, []),
    ],
)
def test_other_outcomes(status: CommandStatus, expected: list[Decision]) -> None:
    assert on_command_result(result(status)) == expected


def test_every_final_status_is_judged() -> None:
    """A status added to the shared enum must be decided here deliberately, not fall through unnoticed."""
    judged = {
        CommandStatus.ACKNOWLEDGED,
        CommandStatus.CONFIRMED,
        CommandStatus.FAILED,
        CommandStatus.EXPIRED,
        CommandStatus.UNSUPPORTED,
        CommandStatus.REJECTED,
    }
    assert set(CommandStatus) == judged
