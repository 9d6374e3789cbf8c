"""The AsyncAPI 2.6 document of every MQTT topic, generated from the shared topics and message models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shuidian_shared import messages, topics
from shuidian_shared.contracts.insights import LineLossExceeded, MonthlyReportReady
from shuidian_shared.contracts.payments import PaymentProblem


@dataclass(frozen=True)
class Channel:
    address: str
    model: type[BaseModel]
    publisher: str
    consumers: str
    retained: bool
    description: str


CHANNELS: tuple[Channel, ...] = (
    Channel(
        topics.readings("{gateway_id}"),
        messages.ReadingBatch,
        "collector",
        "billing, alarm",
        False,
        "一个网关一个采集周期的读数 · One batch of readings per gateway poll cycle.",
    ),
    Channel(
        topics.gateway_replay("{gateway_id}"),
        messages.ReplayRequest,
        "billing",
        "collector",
        False,
        "补发请求 · A consumer missed batches of a gateway's stream (a jump in their sequence) and asks the "
        "collector holding them to publish them again.",
    ),
    Channel(
        topics.dead_letters("{service}"),
        messages.DeadLetterParked,
        "every service",
        "alarm, operations",
        False,
        "死信 · A service parked a message it could not process; someone must fix the cause and replay it.",
    ),
    Channel(
        topics.meter_state("{meter_id}"),
        messages.DeviceState,
        "collector",
        "anyone",
        True,
        "表计在线、继电器/阀门状态 · Online, relay/valve and last-reading state of a meter (retained).",
    ),
    Channel(
        topics.gateway_status("{gateway_id}"),
        messages.GatewayStatus,
        "collector",
        "alarm, dashboards",
        True,
        "网关在线状态 · A field gateway went online or offline (retained).",
    ),
    Channel(
        topics.poll_stats("{gateway_id}"),
        messages.PollStats,
        "collector",
        "alarm, operations",
        False,
        "抄表通信质量 · Poll outcomes of a gateway's meters over a window (attempts, failures by kind), "
        "for communication-quality alarms.",
    ),
    Channel(
        topics.meter_command("{meter_id}"),
        messages.CommandRequested,
        "control",
        "collector",
        False,
        "下发给表计的命令 · A device command for the collector that owns the meter.",
    ),
    Channel(
        topics.command_result("{meter_id}"),
        messages.CommandResult,
        "collector",
        "control, alarm, gateway",
        False,
        "命令结果 · What the meter answered to a command.",
    ),
    Channel(
        topics.command_update("{meter_id}"),
        messages.CommandUpdate,
        "control",
        "alarm, gateway, integrators",
        False,
        "命令状态变化 · A command changed state (pending → sent → confirmed | failed | expired).",
    ),
    Channel(
        topics.reading_held("{meter_id}"),
        messages.ReadingHeld,
        "billing",
        "alarm, operations",
        False,
        "读数待复核 · Billing held an implausible reading for review instead of billing it.",
    ),
    Channel(
        topics.balance("{account_id}"),
        messages.BalanceEvent,
        "billing",
        "control, alarm, gateway",
        False,
        "余额事件 · Low balance (level 1/2), exhausted, restored.",
    ),
    Channel(
        topics.room_occupancy("{room_id}"),
        messages.RoomOccupancy,
        "billing",
        "alarm, control, integrators",
        True,
        "房间入住状态 · Whether a room is leased and which meters supply it (retained; republished on every "
        "move-in, move-out and meter binding).",
    ),
    Channel(
        topics.tenant_contact("{tenant_id}"),
        messages.TenantContact,
        "billing",
        "alarm",
        True,
        "租户联系方式 · The phone billing keeps for a tenant (retained; published when a tenant is created or their "
        "phone changes). Alarm texts the newest one.",
    ),
    Channel(
        topics.line_loss("{group_id}"),
        LineLossExceeded,
        "insights",
        "alarm",
        False,
        "线损超标 · A line-loss group (a master meter and its sub-meters) lost more than its threshold over a "
        "complete day.",
    ),
    Channel(
        topics.monthly_report("{account_id}"),
        MonthlyReportReady,
        "insights",
        "gateway (the tenant's live stream: event monthly_report)",
        False,
        "月度用能报告 · A household's monthly report is ready (once per household and month, on the 1st, "
        "Asia/Shanghai): the month's use per utility and the route of the full report.",
    ),
    Channel(
        topics.payment_problems("{provider}"),
        PaymentProblem,
        "billing",
        "alarm",
        False,
        "支付异常 · A payment held for review: an amount or merchant mismatch, a burst of forged notifications, a "
        "reconciliation difference or a refund the provider refused. Alarm raises payment_problem.",
    ),
    Channel(
        topics.alarm("{alarm_type}"),
        messages.AlarmEvent,
        "alarm",
        "gateway, integrators",
        False,
        "告警 · An alarm was raised, acknowledged or cleared.",
    ),
    Channel(
        topics.tenant_notifications("{tenant_id}"),
        messages.TenantNotification,
        "alarm",
        "tenant apps",
        False,
        "租户通知 · A push notification for one tenant's app (broker ACLs: each tenant reads only their own).",
    ),
    Channel(
        topics.service_status("{service}", "{instance}"),
        messages.ServiceStatus,
        "every service",
        "operations",
        True,
        "服务在线状态（遗嘱消息）· A service instance is online or offline (retained, last will).",
    ),
)


def _parameters(address: str) -> dict[str, Any]:
    names = [part[1:-1] for part in address.split("/") if part.startswith("{")]
    return {n: {"description": f"the {n.replace('_', ' ')}", "schema": {"type": "string"}} for n in names}


def document(version: str = "1.0.0") -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages_: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for channel in CHANNELS:
        name = channel.model.__name__
        schema = channel.model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        messages_[name] = {
            "name": name,
            "title": name,
            "summary": (channel.model.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[channel.address] = {
            "description": channel.description,
            "parameters": _parameters(channel.address),
            "subscribe": {
                "operationId": f"on{name}",
                "summary": f"published by {channel.publisher}; consumed by {channel.consumers}",
                "bindings": {"mqtt": {"qos": 1, "retain": channel.retained, "bindingVersion": "0.2.0"}},
                "message": {"$ref": f"#/components/messages/{name}"},
            },
        }
    return {
        "asyncapi": "2.6.0",
        "id": "urn:shuidian:mqtt",
        "info": {
            "title": "Shuidian MQTT topics",
            "version": version,
            "description": "水电平台 MQTT 主题 · Every topic of the platform. Payloads are JSON; money and quantities "
            "are decimal strings; every message carries schema_version, message_id, occurred_at (UTC) and source. "
            "Integrators subscribe with broker credentials scoped by the broker ACLs.",
        },
        "servers": {"broker": {"url": "mqtt://127.0.0.1:1883", "protocol": "mqtt", "protocolVersion": "3.1.1"}},
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"schemas": schemas, "messages": messages_},
    }


class AsyncApiDocument(BaseModel):
    """The AsyncAPI 2.6 document of every MQTT topic (served as built; its schemas are the shared message models)."""

    model_config = ConfigDict(extra="allow")

    asyncapi: str
    info: dict[str, Any]
    channels: dict[str, Any] = Field(description="one per topic, by address template")
    components: dict[str, Any] = Field(description="messages and their payload schemas")
