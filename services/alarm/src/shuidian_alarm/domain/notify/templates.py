"""Message templates in zh-CN and English: a subject and a body per alarm event."""

from __future__ import annotations

from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from shuidian_alarm.domain.alarms import AlarmRecord

LANGUAGES: Final = ("zh-CN", "en")

SEVERITY_NAMES: Final = {
    "zh-CN": {"info": "提示", "warning": "一般", "major": "重要", "critical": "紧急"},
    "en": {"info": "Info", "warning": "Warning", "major": "Major", "critical": "Critical"},
}

TYPE_NAMES: Final = {
    "balance_low": ("余额不足", "Low balance"),
    "balance_exhausted": ("余额用尽", "Balance exhausted"),
    "balance_mismatch": ("表内余额不一致", "Meter balance mismatch"),
    "command_failed": ("表计命令失败", "Meter command failed"),
    "water_leak": ("疑似漏水", "Suspected water leak"),
    "usage_spike": ("用量突增", "Usage spike"),
    "electric_leakage": ("漏电", "Electric leakage"),
    "gateway_offline": ("网关离线", "Gateway offline"),
    "meter_offline": ("表计离线", "Meter offline"),
    "over_voltage": ("过电压", "Over-voltage"),
    "under_voltage": ("欠电压", "Under-voltage"),
    "over_current": ("过电流", "Over-current"),
    "overload": ("过载", "Overload"),
    "tamper": ("表计开盖", "Meter tampered"),
    "battery_low": ("表计电池低", "Meter battery low"),
    "supply_mismatch": ("通断状态不符", "Supply state mismatch"),
    "reverse_power": ("功率反向", "Reverse power"),
    "low_power_factor": ("功率因数过低", "Low power factor"),
    "clock_drift": ("表计时钟偏差", "Meter clock drift"),
    "comm_errors": ("通信不稳定", "Unreliable communication"),
    "vacant_usage": ("空置房间有用量", "Consumption in a vacant room"),
    "line_loss": ("线损超标", "Line loss over threshold"),
    "payment_problem": ("支付异常", "Payment problem"),
    "reading_held": ("读数待审", "Reading held for review"),
    "unknown_meter": ("未登记表计", "Unknown meter"),
}

_EVENTS: Final = {
    "zh-CN": {"raised": "告警", "escalated": "告警升级", "cleared": "告警解除"},
    "en": {"raised": "Alarm", "escalated": "Alarm escalated", "cleared": "Alarm cleared"},
}

_BODY: Final = {
    "zh-CN": "{place}{message}\n级别：{severity}\n时间：{time}\n告警编号：{alarm_id}",
    "en": "{place}{message}\nSeverity: {severity}\nTime: {time}\nAlarm: {alarm_id}",
}


def render(alarm: AlarmRecord, event: str, language: str, timezone: str, at: datetime) -> tuple[str, str]:
    """(subject, body) of one notification about `alarm` in `language` (zh-CN or en)."""
    zh = language == "zh-CN"
    names = TYPE_NAMES.get(alarm.alarm_type, (alarm.alarm_type, alarm.alarm_type))
    severity = SEVERITY_NAMES[language][alarm.severity.value]
    place_parts = [p for p in (alarm.estate, alarm.building, alarm.room) if p]
    if not place_parts and alarm.meter_id:
        place_parts = [alarm.meter_id]
    place = (" ".join(place_parts) + ("：" if zh else ": ")) if place_parts else ""
    brand = "【水电】" if zh else "[Shuidian] "
    subject = f"{brand}{_EVENTS[language][event]} · {severity} · {names[0] if zh else names[1]}"
    body = _BODY[language].format(
        place=place,
        message=alarm.message_zh if zh else alarm.message_en,
        severity=severity,
        time=at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M"),
        alarm_id=alarm.alarm_id,
    )
    return subject, body
