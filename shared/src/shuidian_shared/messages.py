"""Frozen message models for every MQTT payload; JSON, decimal strings for money and quantities.

Every message carries `schema_version`, `message_id`, `occurred_at` (aware UTC) and `source`.
Decode with `Model.model_validate_json(payload)`; invalid payloads raise pydantic's
ValidationError, which listeners log, count and drop.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shuidian_shared.money import Money, Quantity

SCHEMA_VERSION = 1
READING_NAMESPACE = uuid.UUID("5f1f4a8e-93a4-4c4b-9a53-2e6d1b7c0a11")


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC)


AwareDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Envelope fields shared by every message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    source: str = Field(min_length=1, max_length=128, description="service/instance that produced it")


class Utility(StrEnum):
    ELECTRICITY = "electricity"
    WATER = "water"


class RelayState(StrEnum):
    CLOSED = "closed"  # supply on
    OPEN = "open"  # supply cut off
    UNKNOWN = "unknown"


class ValveState(StrEnum):
    OPEN = "open"  # water flows
    CLOSED = "closed"
    MOVING = "moving"
    ABNORMAL = "abnormal"
    UNKNOWN = "unknown"


class ReadingFlag(StrEnum):
    BATTERY_LOW = "battery_low"
    TAMPER = "tamper"
    CLOCK_DRIFT = "clock_drift"
    PARTIAL = "partial"  # some registers of the meter's read set did not answer
    POWER_REVERSED = "power_reversed"
    LEAKAGE = "leakage"  # the meter's residual-current (漏电) protection warns or tripped


# Canonical register names besides the cumulative ones (a meter publishes only what it has):
#   residual_current (mA) — leakage current of meters with residual-current measurement
#   clock_offset_s (s) — the meter's clock minus the collector's clock, when the meter's time was read
RESIDUAL_CURRENT = "residual_current"
CLOCK_OFFSET = "clock_offset_s"


def reading_id(meter_id: str, sampled_at: datetime) -> uuid.UUID:
    """Deterministic id of a reading: the same meter sampled at the same instant is the same reading."""
    instant = _aware_utc(sampled_at).isoformat(timespec="microseconds")
    return uuid.uuid5(READING_NAMESPACE, f"{meter_id}|{instant}")


class Reading(BaseModel):
    """One meter sampled once: cumulative registers and instantaneous values as the meter reported them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reading_id: uuid.UUID
    meter_id: Identifier
    utility: Utility
    sampled_at: AwareDatetime = Field(description="when the meter answered")
    registers: dict[str, Quantity] = Field(
        description="canonical register name → value, e.g. energy_active_import_total (kWh), water_volume_total (m³)"
    )
    relay: RelayState | None = None
    valve: ValveState | None = None
    keep_power: bool | None = None
    flags: frozenset[ReadingFlag] = frozenset()

    @classmethod
    def create(cls, meter_id: str, utility: Utility, sampled_at: datetime, **fields: object) -> Reading:
        return cls.model_validate(
            {
                "reading_id": reading_id(meter_id, sampled_at),
                "meter_id": meter_id,
                "utility": utility,
                "sampled_at": sampled_at,
                **fields,
            }
        )


class ReadingBatch(Message):
    """Readings taken from one gateway in one poll cycle.

    `epoch` and `sequence` number a gateway's batches without gaps: the collector gives each batch
    the next number of the gateway's stream in its local store (`epoch` names that store), so a
    consumer can tell a batch that never arrived — one a broker acknowledged and then lost — and
    ask for it again (`ReplayRequest`)."""

    gateway_id: Identifier
    readings: tuple[Reading, ...]
    epoch: Identifier | None = None
    sequence: int | None = Field(default=None, ge=1)


class ReplayRequest(Message):
    """A consumer missed batches `from_sequence`..`to_sequence` of a gateway's stream: the collector
    holding that stream publishes them again if it still has them (docs/delivery.md)."""

    gateway_id: Identifier
    epoch: Identifier
    from_sequence: int = Field(ge=1)
    to_sequence: int = Field(ge=1)


class DeviceState(Message):
    """Last known state of a meter (retained on the meter's state topic)."""

    meter_id: Identifier
    gateway_id: Identifier
    online: bool
    relay: RelayState | None = None
    valve: ValveState | None = None
    keep_power: bool | None = None
    last_reading_at: AwareDatetime | None = None
    reason: str | None = None


class GatewayStatus(Message):
    """A gateway went offline (nothing behind it answers) or came back: one event per edge, retained."""

    gateway_id: Identifier
    online: bool
    meters: int = Field(ge=0, description="meters behind the gateway")
    reason: str | None = None


class PollCounts(BaseModel):
    """One meter's poll transactions over a window: how many were tried, how many failed and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    meter_id: Identifier
    attempts: int = Field(ge=0)
    failures: int = Field(ge=0, description="attempts that got no valid answer")
    errors: dict[str, int] = Field(
        default_factory=dict, description="failures by kind: timeout, checksum, malformed, error_reply, …"
    )

    @model_validator(mode="after")
    def _failures_within_attempts(self) -> PollCounts:
        if self.failures > self.attempts:
            raise ValueError("failures cannot exceed attempts")
        return self


class PollStats(Message):
    """Poll outcomes of a gateway's meters over [window_start, window_end), for communication-quality alarms."""

    gateway_id: Identifier
    window_start: AwareDatetime
    window_end: AwareDatetime
    gateway_down: bool = Field(default=False, description="the gateway itself was unreachable in the window")
    meters: tuple[PollCounts, ...]


class CommandKind(StrEnum):
    TRIP = "trip"
    CLOSE_ALLOWED = "close_allowed"  # tenant or meter may re-close
    DIRECT_CLOSE = "direct_close"
    KEEP_POWER_ON = "keep_power_on"
    KEEP_POWER_OFF = "keep_power_off"
    VALVE_OPEN = "valve_open"
    VALVE_CLOSE = "valve_close"
    TIME_SYNC = "time_sync"
    PARAMETER_WRITE = "parameter_write"


class CommandOrigin(StrEnum):
    BILLING = "billing"
    OPERATOR = "operator"
    SCHEDULE = "schedule"
    INTEGRATOR = "integrator"
    RECONCILE = "reconcile"


class CommandRequested(Message):
    """Control asks the collector that owns the meter to execute a device command."""

    command_id: uuid.UUID
    meter_id: Identifier
    kind: CommandKind
    expires_at: AwareDatetime
    origin: CommandOrigin
    reason: str = Field(max_length=500)
    parameters: dict[str, str] = Field(default_factory=dict)
    attempt: int = Field(
        default=1,
        ge=1,
        description="control re-sends a command as attempt 2, 3, …; the collector runs each (command_id, attempt) at most once",
    )


class CommandStatus(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # the meter accepted the frame
    CONFIRMED = "confirmed"  # state read back matches
    FAILED = "failed"
    EXPIRED = "expired"
    UNSUPPORTED = "unsupported"  # the meter's model cannot do this command: final, never retried
    # Refused before any frame was sent: a value the meter cannot take, or credentials the collector
    # lacks. Final, never retried: sending it again cannot succeed until staff change something.
    REJECTED = "rejected"


class CommandResult(Message):
    """The collector's outcome for a command, keyed by its id."""

    command_id: uuid.UUID
    meter_id: Identifier
    kind: CommandKind
    status: CommandStatus
    detail: str = ""
    relay: RelayState | None = None
    valve: ValveState | None = None
    request_frame: str | None = Field(default=None, description="hex of the frame sent, for the audit trail")
    response_frame: str | None = Field(default=None, description="hex of the meter's answer, for the audit trail")
    attempt: int = Field(default=1, ge=1)


class CommandState(StrEnum):
    """Control's lifecycle of a command: pending → sent → acknowledged → confirmed | failed | expired | cancelled."""

    PENDING = "pending"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class CommandUpdate(Message):
    """A command changed state in control (for alarm, the api-gateway and integrators)."""

    command_id: uuid.UUID
    meter_id: Identifier
    kind: CommandKind
    state: CommandState
    origin: CommandOrigin
    attempt: int = Field(default=1, ge=1)
    reason: str = Field(default="", max_length=500)
    detail: str = Field(default="", max_length=500)
    account_id: Identifier | None = None
    expires_at: AwareDatetime | None = None


class BalanceLevel(StrEnum):
    OK = "ok"
    LOW_1 = "low_1"
    LOW_2 = "low_2"
    EXHAUSTED = "exhausted"


class BalanceEventKind(StrEnum):
    LOW_1 = "low_1"
    LOW_2 = "low_2"
    EXHAUSTED = "exhausted"
    RESTORED = "restored"
    CHANGED = "changed"  # balance moved within the same level (for live displays)


class MeterRef(BaseModel):
    """A meter and the utility it measures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    meter_id: Identifier
    utility: Utility


class BalanceEvent(Message):
    """A household account's balance crossed a level (or changed, for live displays)."""

    account_id: Identifier
    kind: BalanceEventKind
    level: BalanceLevel
    balance: Money
    sequence: int = Field(ge=0, description="monotonic per account; consumers ignore older sequences")
    meters: tuple[MeterRef, ...] = Field(description="meters supplied from this balance")


class RoomOccupancy(Message):
    """Whether a room has an active lease and which meters supply it; retained per room, republished by
    billing on every move-in, move-out and meter (re)binding."""

    room_id: Identifier
    estate_id: Identifier
    leased: bool
    since: AwareDatetime = Field(description="when the room became leased or vacant")
    lease_id: Identifier | None = None
    account_id: Identifier | None = None
    tenant_id: Identifier | None = None
    meters: tuple[MeterRef, ...] = Field(description="meters bound to the room now")


class TenantContact(Message):
    """A tenant's contact details as billing's tenant record holds them; retained per tenant, published by billing
    when a tenant is created or their phone changes. Consumers keep the newest `changed_at` per tenant and ignore
    older ones, so redelivery and reordering are harmless."""

    tenant_id: Identifier
    phone: str | None = Field(default=None, max_length=30, description="None: billing keeps no phone for the tenant")
    changed_at: AwareDatetime = Field(description="when billing's tenant record changed")


class ReadingHeld(Message):
    """Billing held a reading for review instead of billing it (impossible jump, register went down), or
    did not bill it because nobody pays for its meter (unknown_meter: once per meter and billing process,
    with BILLING_UNKNOWN_METER_NOTICE on)."""

    meter_id: Identifier
    reading_id: uuid.UUID
    register_name: str
    value: Quantity
    sampled_at: AwareDatetime
    reason: str = Field(description="implausible_jump, register_decreased, out_of_range or unknown_meter")
    watermark_value: Quantity | None = Field(default=None, description="last accepted value of the register")
    watermark_sampled_at: AwareDatetime | None = None


class AlarmSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class AlarmState(StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class AlarmEvent(Message):
    """An alarm was raised, updated, acknowledged or cleared."""

    alarm_id: uuid.UUID
    alarm_type: Identifier
    source_id: Identifier = Field(description="meter, gateway or account the alarm is about")
    severity: AlarmSeverity
    state: AlarmState
    message_zh: str
    message_en: str
    details: dict[str, str] = Field(default_factory=dict)


class TenantNotification(Message):
    """An alarm about one of a tenant's own rooms, pushed to the tenant's app in their language."""

    notification_id: uuid.UUID
    tenant_id: Identifier
    alarm_id: uuid.UUID
    alarm_type: Identifier
    severity: AlarmSeverity
    event: str = Field(description="raised, escalated or cleared")
    language: str = Field(default="zh-CN", description="zh-CN or en")
    title: str
    body: str


class DeadLetterParked(Message):
    """A service parked a message it could not process in its dead-letter table (docs/delivery.md):
    someone must look at it, fix the cause and replay it."""

    service: Identifier
    instance: str = Field(max_length=128)
    letter_id: int = Field(ge=1)
    topic: str = Field(max_length=512)
    reason: str = Field(max_length=64)
    error: str = Field(max_length=4000)


class ServiceStatus(Message):
    """Online/offline status of a service instance (retained; the offline form is the last will)."""

    service: str
    instance: str
    online: bool
