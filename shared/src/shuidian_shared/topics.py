"""Every MQTT topic the platform uses, defined once and versioned (no topic literal anywhere else).

| topic | publisher | QoS / retain | payload |
|---|---|---|---|
| shuidian/v1/readings/{gateway_id} | collector | 1 | ReadingBatch |
| shuidian/v1/meters/{meter_id}/state | collector | 1, retained | DeviceState |
| shuidian/v1/gateways/{gateway_id}/status | collector | 1, retained | GatewayStatus |
| shuidian/v1/gateways/{gateway_id}/poll-stats | collector | 1 | PollStats |
| shuidian/v1/meters/{meter_id}/command | control | 1 | CommandRequested |
| shuidian/v1/meters/{meter_id}/command-result | collector | 1 | CommandResult |
| shuidian/v1/meters/{meter_id}/command-update | control | 1 | CommandUpdate |
| shuidian/v1/accounts/{account_id}/balance | billing | 1 | BalanceEvent |
| shuidian/v1/meters/{meter_id}/reading-held | billing | 1 | ReadingHeld |
| shuidian/v1/rooms/{room_id}/occupancy | billing | 1, retained | RoomOccupancy |
| shuidian/v1/tenants/{tenant_id}/contact | billing | 1, retained | TenantContact |
| shuidian/v1/alarms/{alarm_type} | alarm | 1 | AlarmEvent |
| shuidian/v1/tenants/{tenant_id}/notifications | alarm | 1 | TenantNotification |
| shuidian/v1/insights/line-loss/{group_id} | insights | 1 | LineLossExceeded (contracts.insights) |
| shuidian/v1/payments/problems/{provider} | billing | 1 | PaymentProblem (contracts.payments) |
| shuidian/v1/accounts/{account_id}/monthly-report | insights | 1 | MonthlyReportReady (contracts.insights) |
| shuidian/v1/status/{service}/{instance} | every service | 1, retained, last will | ServiceStatus |
"""

from __future__ import annotations

ROOT = "shuidian/v1"


def _segment(value: str) -> str:
    # A topic level must not smuggle in extra levels or wildcards.
    if not value or any(ch in value for ch in "/+#\x00"):
        raise ValueError(f"invalid topic segment: {value!r}")
    return value


def readings(gateway_id: str) -> str:
    return f"{ROOT}/readings/{_segment(gateway_id)}"


def meter_state(meter_id: str) -> str:
    return f"{ROOT}/meters/{_segment(meter_id)}/state"


def gateway_status(gateway_id: str) -> str:
    return f"{ROOT}/gateways/{_segment(gateway_id)}/status"


def dead_letters(service: str) -> str:
    return f"{ROOT}/dead-letters/{_segment(service)}"


def gateway_replay(gateway_id: str) -> str:
    return f"{ROOT}/gateways/{_segment(gateway_id)}/replay"


def poll_stats(gateway_id: str) -> str:
    return f"{ROOT}/gateways/{_segment(gateway_id)}/poll-stats"


def room_occupancy(room_id: str) -> str:
    return f"{ROOT}/rooms/{_segment(room_id)}/occupancy"


def tenant_contact(tenant_id: str) -> str:
    """Billing's record of how to reach a tenant (retained; read by alarm, not by the tenant's app)."""
    return f"{ROOT}/tenants/{_segment(tenant_id)}/contact"


def meter_command(meter_id: str) -> str:
    return f"{ROOT}/meters/{_segment(meter_id)}/command"


def command_result(meter_id: str) -> str:
    return f"{ROOT}/meters/{_segment(meter_id)}/command-result"


def command_update(meter_id: str) -> str:
    return f"{ROOT}/meters/{_segment(meter_id)}/command-update"


def reading_held(meter_id: str) -> str:
    return f"{ROOT}/meters/{_segment(meter_id)}/reading-held"


def balance(account_id: str) -> str:
    return f"{ROOT}/accounts/{_segment(account_id)}/balance"


def alarm(alarm_type: str) -> str:
    return f"{ROOT}/alarms/{_segment(alarm_type)}"


def tenant_notifications(tenant_id: str) -> str:
    """Push notifications for one tenant's app (broker ACLs let each tenant read only their own)."""
    return f"{ROOT}/tenants/{_segment(tenant_id)}/notifications"


def line_loss(group_id: str) -> str:
    """A line-loss group lost more than its threshold over a complete day (insights → alarm)."""
    return f"{ROOT}/insights/line-loss/{_segment(group_id)}"


def monthly_report(account_id: str) -> str:
    """A household's monthly report is ready (insights → the tenant's app, through the gateway)."""
    return f"{ROOT}/accounts/{_segment(account_id)}/monthly-report"


def payment_problems(provider: str) -> str:
    """A payment held for review: mismatch, wrong merchant, forged notifications, reconciliation (billing → alarm)."""
    return f"{ROOT}/payments/problems/{_segment(provider)}"


def service_status(service: str, instance: str) -> str:
    return f"{ROOT}/status/{_segment(service)}/{_segment(instance)}"


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription spreading messages across the members of `group`."""
    return f"$share/{_segment(group)}/{topic_filter}"


# Subscription filters.
ALL_READINGS = f"{ROOT}/readings/+"
ALL_METER_STATES = f"{ROOT}/meters/+/state"
ALL_GATEWAY_STATUS = f"{ROOT}/gateways/+/status"
ALL_POLL_STATS = f"{ROOT}/gateways/+/poll-stats"
ALL_GATEWAY_REPLAYS = f"{ROOT}/gateways/+/replay"
ALL_DEAD_LETTERS = f"{ROOT}/dead-letters/+"
ALL_ROOM_OCCUPANCY = f"{ROOT}/rooms/+/occupancy"
ALL_TENANT_CONTACTS = f"{ROOT}/tenants/+/contact"
ALL_METER_COMMANDS = f"{ROOT}/meters/+/command"
ALL_COMMAND_RESULTS = f"{ROOT}/meters/+/command-result"
ALL_COMMAND_UPDATES = f"{ROOT}/meters/+/command-update"
ALL_BALANCES = f"{ROOT}/accounts/+/balance"
ALL_READINGS_HELD = f"{ROOT}/meters/+/reading-held"
ALL_ALARMS = f"{ROOT}/alarms/+"
ALL_LINE_LOSS = f"{ROOT}/insights/line-loss/+"
ALL_PAYMENT_PROBLEMS = f"{ROOT}/payments/problems/+"
ALL_MONTHLY_REPORTS = f"{ROOT}/accounts/+/monthly-report"
ALL_SERVICE_STATUS = f"{ROOT}/status/+/+"


def segment(topic: str, index: int) -> str:
    """The `index`-th level after the version root, e.g. the meter id of a meter topic (index 1)."""
    return topic.removeprefix(ROOT + "/").split("/")[index]
