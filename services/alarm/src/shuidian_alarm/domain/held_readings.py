"""Billing's held readings become staff alarms (stateless).

A reading billing would not bill stops that meter's bill until staff look: `reading_held` (an impossible jump, a
register that went down or out of range; billing holds the meter's later readings too) or `unknown_meter` (a meter
nobody pays for: announced once per meter and billing process with BILLING_UNKNOWN_METER_NOTICE on). One open alarm
per meter and kind: a redelivery or the next held reading updates it. Nothing clears it by itself: staff release or
discard the held reading (or bind the meter) and resolve the alarm."""

from __future__ import annotations

from shuidian_alarm.domain.decisions import Decision, Raise
from shuidian_shared.messages import AlarmSeverity, ReadingHeld

READING_HELD = "reading_held"
UNKNOWN_METER = "unknown_meter"
UNKNOWN_METER_REASON = "unknown_meter"

_WHY: dict[str, tuple[str, str]] = {
    "implausible_jump": ("读数跳变超出合理范围", "an implausible jump"),
    "register_decreased": ("读数倒退", "the register went down"),
    "out_of_range": ("读数超出量程", "a value out of range"),
}


def on_reading_held(event: ReadingHeld) -> list[Decision]:
    """A reading billing held or could not bill: a warning on the meter (placed where the meter is described)."""
    details = {
        "reason": event.reason,
        "reading_id": str(event.reading_id),
        "register": event.register_name,
        "value": f"{event.value}",
        "sampled_at": event.sampled_at.isoformat(),
    }
    if event.reason == UNKNOWN_METER_REASON:
        return [
            Raise(
                event.meter_id,
                UNKNOWN_METER,
                AlarmSeverity.WARNING,
                f"未登记表计 {event.meter_id} 上报读数（{event.value}），无人为其付费，未计费；请绑定房间或账户，或检查网关配置",
                f"Unknown meter {event.meter_id} sends readings ({event.value}) nobody pays for; they are not billed. "
                "Bind it to a room or account, or check the gateway's configuration",
                details,
            )
        ]
    zh, en = _WHY.get(event.reason, (event.reason, event.reason))
    if event.watermark_value is not None:
        details["watermark_value"] = f"{event.watermark_value}"
    if event.watermark_sampled_at is not None:
        details["watermark_sampled_at"] = event.watermark_sampled_at.isoformat()
    last = "" if event.watermark_value is None else f"（上次 {event.watermark_value}）"
    last_en = "" if event.watermark_value is None else f" (last accepted {event.watermark_value})"
    return [
        Raise(
            event.meter_id,
            READING_HELD,
            AlarmSeverity.WARNING,
            f"表计 {event.meter_id} 读数 {event.value}{last}{zh}，已暂停计费，请在待审读数中核实",
            f"Meter {event.meter_id} reading {event.value}{last_en}: {en}; billing holds it, review the held readings",
            details,
        )
    ]
