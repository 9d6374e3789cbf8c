"""What the API returns, as pydantic models. Money is Decimal (sent and received as decimal strings);
unknown fields are kept, so a newer API does not break an older SDK."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Tokens(_Model):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class WhoAmI(_Model):
    kind: str
    subject: str
    role: str
    estates: list[str]
    tenant_id: str | None
    actions: list[str]


class Me(_Model):
    tenant_id: str
    accounts: list[str]
    rooms: list[str]
    meters: list[str]


class Balance(_Model):
    account_id: str
    name: str
    balance: Decimal
    available: Decimal
    level: str
    sequence: int


class LiveMeter(_Model):
    meter_id: str
    device: dict[str, Any] | None
    last_reading: dict[str, Any] | None


class PaymentOrder(_Model):
    order_id: str
    account_id: str
    amount: Decimal
    provider: str
    status: str


class Payment(_Model):
    payment_id: str
    account_id: str
    amount: Decimal
    channel: str
    balance_after: Decimal


class CommandAccepted(_Model):
    command_id: str


class NotificationSettings(_Model):
    low_balance: bool = True
    alarms: bool = True
    statements: bool = True
    channels: list[Literal["app", "sms", "email"]] = ["app"]
    quiet_hours: str | None = None


class User(_Model):
    user_id: str
    username: str
    role: str
    estates: list[str]
    tenant_id: str | None
    active: bool
    version: int
    created_at: datetime


class ApiKey(_Model):
    key_id: str
    prefix: str
    name: str
    scopes: list[str]
    revoked_at: datetime | None = None
    key: str | None = None  # only in the answer to its creation


class Webhook(_Model):
    webhook_id: str
    url: str
    events: list[str]
    active: bool
    version: int
    secret: str | None = None  # only in the answer to its creation


class Page(_Model, Generic[T]):
    items: list[T]
    next_cursor: str | None


class Versioned(_Model, Generic[T]):
    """A resource with the ETag to send back as If-Match."""

    value: T
    etag: str
