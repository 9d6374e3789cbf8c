"""Alarms straight from another service's event: balance levels, command outcomes, parked messages, line loss
(stateless)."""

from __future__ import annotations

from shuidian_alarm.domain.decisions import Clear, Decision, Raise
from shuidian_alarm.domain.targets import Placement, Target
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.messages import (
    AlarmSeverity,
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    CommandResult,
    CommandState,
    CommandStatus,
    CommandUpdate,
    DeadLetterParked,
)

BALANCE_LOW = "balance_low"
BALANCE_EXHAUSTED = "balance_exhausted"
COMMAND_FAILED = "command_failed"
MESSAGE_DEAD_LETTER = "message_dead_letter"
LINE_LOSS = "line_loss"


def on_dead_letter(event: DeadLetterParked) -> list[Decision]:
    """A service parked a message it could not process: one open alarm per service until staff clear it."""
    return [
        Raise(
            event.service,
            MESSAGE_DEAD_LETTER,
            AlarmSeverity.MAJOR,
            f"服务 {event.service} 有无法处理的消息已转入死信表（{event.reason}，主题 {event.topic}），需排查后重放",
            f"Service {event.service} parked a message it could not process ({event.reason}, on {event.topic}); "
            "find the cause, then replay it",
            {
                "letter_id": str(event.letter_id),
                "topic": event.topic,
                "reason": event.reason,
                "instance": event.instance,
            },
        )
    ]


def on_balance(event: BalanceEvent) -> list[Decision]:
    account, balance = event.account_id, f"{event.balance}"
    details = {"balance": balance, "level": event.level.value}
    if event.kind in (BalanceEventKind.LOW_1, BalanceEventKind.LOW_2):
        severity = AlarmSeverity.WARNING if event.kind is BalanceEventKind.LOW_1 else AlarmSeverity.MAJOR
        return [
            Raise(
                account,
                BALANCE_LOW,
                severity,
                f"余额不足：当前余额 {balance} 元，请及时充值",
                f"Low balance: {balance} CNY left, please top up",
                details,
            )
        ]
    if event.kind is BalanceEventKind.EXHAUSTED:
        return [
            Raise(
                account,
                BALANCE_EXHAUSTED,
                AlarmSeverity.MAJOR,
                f"余额已用尽（{balance} 元），将停止供电",
                f"Balance exhausted ({balance} CNY); supply will be cut off",
                details,
            )
        ]
    decisions: list[Decision] = []
    if event.kind is BalanceEventKind.RESTORED:
        decisions.append(Clear(account, BALANCE_EXHAUSTED))
    if event.level is BalanceLevel.OK:
        decisions.append(Clear(account, BALANCE_LOW))
    return decisions


def on_command_result(result: CommandResult) -> list[Decision]:
    """The collector's outcome of one attempt: failed, expired or rejected raises, confirmed clears.

    Rejected (a value the meter cannot take, or credentials the collector lacks; nothing was sent) is final and
    cannot succeed until staff change something, so it raises with its own wording. Unsupported is left to
    control, which fails the command and so raises through `on_command_update`."""
    if result.status is CommandStatus.REJECTED:
        return [
            Raise(
                result.meter_id,
                COMMAND_FAILED,
                AlarmSeverity.MAJOR,
                f"表计命令 {result.kind.value} 被采集服务拒绝，未下发，需人工处理：{result.detail}",
                f"Meter command {result.kind.value} rejected by the collector before sending, needs staff action: "
                f"{result.detail}",
                {"command_id": str(result.command_id), "status": result.status.value},
            )
        ]
    if result.status in (CommandStatus.FAILED, CommandStatus.EXPIRED):
        return [
            Raise(
                result.meter_id,
                COMMAND_FAILED,
                AlarmSeverity.MAJOR,
                f"表计命令 {result.kind.value} 未成功：{result.detail}",
                f"Meter command {result.kind.value} {result.status.value}: {result.detail}",
                {"command_id": str(result.command_id)},
            )
        ]
    if result.status is CommandStatus.CONFIRMED:
        return [Clear(result.meter_id, COMMAND_FAILED)]
    return []


def on_command_update(update: CommandUpdate) -> list[Decision]:
    """Control's verdict after its retries: failed or expired raises, confirmed clears."""
    if update.state in (CommandState.FAILED, CommandState.EXPIRED):
        detail = update.detail or update.reason
        return [
            Raise(
                update.meter_id,
                COMMAND_FAILED,
                AlarmSeverity.MAJOR,
                f"表计命令 {update.kind.value} 最终未成功（{update.state.value}，第 {update.attempt} 次尝试）：{detail}",
                f"Meter command {update.kind.value} {update.state.value} after attempt {update.attempt}: {detail}",
                {"command_id": str(update.command_id), "attempt": str(update.attempt)},
            )
        ]
    if update.state is CommandState.CONFIRMED:
        return [Clear(update.meter_id, COMMAND_FAILED)]
    return []


def on_line_loss(event: LineLossExceeded, master: Target | None) -> list[Decision]:
    """Insights judged a line-loss group's day over its threshold: one open alarm per group, placed where its
    master meter is (the group's estate when insights names one, else the master's; its building, so estate
    staff see it; no room or tenant: it is nobody's household).

    Insights publishes a group's day only when it is exceeded, never when the loss is back under the threshold,
    so nothing here clears it: a later day updates the open alarm, and staff resolve it."""
    day, loss, limit = event.day.isoformat(), f"{event.loss_pct}", f"{event.threshold_pct}"
    # The group's own estate wins: it is what staff configured the group in, and a master meter alarm
    # has not been told about (no target yet) must still land in an estate its staff see.
    placement = Placement(
        meter_id=event.master_meter_id,
        estate=event.estate_id or (None if master is None else master.estate),
        building=None if master is None else master.building,
    )
    return [
        Raise(
            event.group_id,
            LINE_LOSS,
            AlarmSeverity.MAJOR,
            f"线损超标：分组 {event.group_id}（总表 {event.master_meter_id}）{day} 线损率 {loss}%，超过阈值 {limit}%"
            f"（总表 {event.master_quantity}，分表合计 {event.sub_quantity}，数据完整度 {event.completeness_pct}%），"
            "请排查窃电、漏接分表或表计故障",
            f"Line loss over threshold: group {event.group_id} (master meter {event.master_meter_id}) lost {loss}% "
            f"on {day}, over its {limit}% threshold (master {event.master_quantity}, sub-meters "
            f"{event.sub_quantity}, {event.completeness_pct}% complete); check for theft, unlisted sub-meters "
            "or a faulty meter",
            {
                "group_id": event.group_id,
                "master_meter_id": event.master_meter_id,
                "day": day,
                "loss_pct": loss,
                "threshold_pct": limit,
                "master_quantity": f"{event.master_quantity}",
                "sub_quantity": f"{event.sub_quantity}",
                "completeness_pct": f"{event.completeness_pct}",
            },
            placement,
        )
    ]
