"""Delivery channels: signed webhooks, e-mail over SMTP, SMS through a provider, MQTT push to a tenant's app.

Each channel turns one notification into one attempt and says whether it worked and, if not,
whether trying again later can help (5xx, timeouts, refused connections) or not (4xx, bad address).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import quote

import aiosmtplib
import httpx

from shuidian_alarm.domain.notify.delivery import Channel, DeliveryResult, Outgoing
from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.urlguard import GuardedTransport, UrlPolicy, UrlRefused, check_url
from shuidian_shared import topics
from shuidian_shared.messages import AlarmSeverity, TenantNotification

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Shuidian-Signature"
TIMESTAMP_HEADER = "X-Shuidian-Timestamp"
DELIVERY_HEADER = "X-Shuidian-Delivery"


def _http_outcome(response: httpx.Response) -> DeliveryResult:
    code = response.status_code
    if 200 <= code < 300:
        return DeliveryResult(True, status_code=code)
    # 408 and 429 are the receiver asking us to come back later, like any 5xx.
    retryable = code >= 500 or code in (408, 429)
    return DeliveryResult(False, retryable, code, response.text[:200])


# --- webhook ---------------------------------------------------------------------------------------


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the timestamp is signed too, so a captured
    request cannot be replayed later with a fresh timestamp."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookChannel:
    """Signed POSTs to URLs someone subscribed. The URL must reach a public address unless the operator
    allow-listed its receiver (`ALARM_WEBHOOK_ALLOWED_NETWORKS`): each send resolves the host once,
    checks every address and connects to the checked one (`shuidian_kit.urlguard`), with no redirects.
    A refused URL is a final failure; retrying cannot help."""

    def __init__(self, client: httpx.AsyncClient, default_secret: str, allowed: UrlPolicy | None = None) -> None:
        self._timeout = client.timeout
        self._default_secret = default_secret
        self._allowed = allowed or UrlPolicy()
        self._ssl = httpx.create_ssl_context(trust_env=False)

    async def send(self, message: Outgoing) -> DeliveryResult:
        try:
            await check_url(message.address, self._allowed)
        except UrlRefused as err:
            return DeliveryResult(False, False, None, f"refused: {err}"[:200])
        body = json.dumps(
            {**message.payload, "subject": message.subject, "body": message.body}, ensure_ascii=False
        ).encode()
        timestamp = int(datetime.now(UTC).timestamp())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(message.secret or self._default_secret, timestamp, body),
            DELIVERY_HEADER: str(message.notification_id),
        }
        # One client per send: its connections are made by the guard, and none outlives the send.
        transport = GuardedTransport(self._allowed, ssl_context=self._ssl)
        try:
            async with httpx.AsyncClient(
                transport=transport, timeout=self._timeout, follow_redirects=False, trust_env=False
            ) as client:
                response = await client.post(message.address, content=body, headers=headers)
        except httpx.TimeoutException as err:
            return DeliveryResult(False, True, None, f"timeout: {err!r}"[:200])
        except httpx.HTTPError as err:
            refused = str(err).startswith("refused:")  # the name now resolves to an internal address
            return DeliveryResult(False, not refused, None, f"{type(err).__name__}: {err}"[:200])
        return _http_outcome(response)


# --- e-mail ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    username: str = ""
    password: str = ""
    starttls: bool = False
    timeout: float = 10.0


class EmailChannel:
    def __init__(self, config: SmtpConfig) -> None:
        self._config = config

    async def send(self, message: Outgoing) -> DeliveryResult:
        email = EmailMessage()
        email["From"] = self._config.sender
        email["To"] = message.address
        email["Subject"] = message.subject
        email["Message-ID"] = f"<{message.notification_id}@shuidian>"
        email.set_content(message.body)
        c = self._config
        try:
            await aiosmtplib.send(
                email,
                hostname=c.host,
                port=c.port,
                username=c.username or None,
                password=c.password or None,
                start_tls=c.starttls,
                timeout=c.timeout,
            )
        except aiosmtplib.SMTPResponseException as err:
            # 4xx replies are transient by definition (RFC 5321); 5xx are final.
            return DeliveryResult(False, 400 <= err.code < 500, err.code, err.message[:200])
        except (aiosmtplib.SMTPException, OSError) as err:
            return DeliveryResult(False, True, None, f"{type(err).__name__}: {err}"[:200])
        return DeliveryResult(True, status_code=250)


# --- SMS -------------------------------------------------------------------------------------------


class SmsProvider(Protocol):
    async def send_sms(self, phone: str, params: dict[str, str]) -> DeliveryResult: ...


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun's RPC signature wants it (space → %20, * → %2A, ~ kept)."""
    return quote(value, safe="~")


def aliyun_signature(secret: str, method: str, params: dict[str, str]) -> str:
    """Aliyun RPC signature v1: base64(HMAC-SHA1(secret + "&", METHOD&%2F&encoded(canonical query)))."""
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True, kw_only=True)
class AliyunSmsConfig:
    endpoint: str
    access_key_id: str
    access_key_secret: str
    sign_name: str
    template_code: str
    region: str = "cn-hangzhou"


# Provider codes that mean "later": flow control and transient service trouble.
_ALIYUN_RETRYABLE = frozenset(
    {"isv.BUSINESS_LIMIT_CONTROL", "Throttling.User", "ServiceUnavailable", "isp.SYSTEM_ERROR"}
)


class AliyunSms:
    """SendSms of Aliyun's Dysms RPC API (version 2017-05-25), signed per their documented v1 scheme."""

    def __init__(self, client: httpx.AsyncClient, config: AliyunSmsConfig) -> None:
        self._client = client
        self._config = config

    def signed_query(self, phone: str, params: dict[str, str], *, nonce: str, timestamp: datetime) -> str:
        c = self._config
        query = {
            "AccessKeyId": c.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "PhoneNumbers": phone,
            "RegionId": c.region,
            "SignName": c.sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": nonce,
            "SignatureVersion": "1.0",
            "TemplateCode": c.template_code,
            "TemplateParam": json.dumps(params, ensure_ascii=False, separators=(",", ":")),
            "Timestamp": timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
        }
        signature = aliyun_signature(c.access_key_secret, "GET", query)
        canonical = "&".join(f"{percent_encode(k)}={percent_encode(query[k])}" for k in sorted(query))
        return f"Signature={percent_encode(signature)}&{canonical}"

    async def send_sms(self, phone: str, params: dict[str, str]) -> DeliveryResult:
        query = self.signed_query(phone, params, nonce=uuid.uuid4().hex, timestamp=datetime.now(UTC))
        try:
            response = await self._client.get(f"{self._config.endpoint}?{query}")
        except httpx.HTTPError as err:
            return DeliveryResult(False, True, None, f"{type(err).__name__}: {err}"[:200])
        if response.status_code >= 500:
            return _http_outcome(response)
        try:
            code = str(response.json().get("Code", ""))
        except (ValueError, AttributeError):
            return DeliveryResult(False, True, response.status_code, "provider answered something other than JSON")
        if code == "OK":
            return DeliveryResult(True, status_code=response.status_code)
        return DeliveryResult(False, code in _ALIYUN_RETRYABLE, response.status_code, code)


class SmsChannel:
    def __init__(self, provider: SmsProvider | None) -> None:
        self._provider = provider

    async def send(self, message: Outgoing) -> DeliveryResult:
        if self._provider is None:
            return DeliveryResult(False, False, None, "no SMS provider configured")
        # SMS templates are registered with the provider; the alarm text fills its variables.
        return await self._provider.send_sms(message.address, {"title": message.subject, "content": message.body[:300]})


# --- MQTT push -------------------------------------------------------------------------------------


class MqttPushChannel:
    """Publishes to the tenant's own topic; the address is the tenant, never a free-form topic."""

    def __init__(self, mqtt: MqttLink, source: str, timeout: float = 10.0) -> None:
        self._mqtt = mqtt
        self._source = source
        self._timeout = timeout

    async def send(self, message: Outgoing) -> DeliveryResult:
        if message.tenant_id is None or message.tenant_id != message.address:
            return DeliveryResult(False, False, None, "MQTT push goes only to the subscribing tenant's topic")
        push = TenantNotification(
            source=self._source,
            notification_id=message.notification_id,
            tenant_id=message.tenant_id,
            alarm_id=uuid.UUID(str(message.payload["alarm_id"])),
            alarm_type=str(message.payload["alarm_type"]),
            severity=AlarmSeverity(str(message.payload["severity"])),
            event=str(message.payload["event"]),
            language=message.language,
            title=message.subject,
            body=message.body,
        )
        try:
            await self._mqtt.publish(topics.tenant_notifications(message.tenant_id), push, timeout=self._timeout)
        except MqttUnavailable as err:
            return DeliveryResult(False, True, None, str(err)[:200])
        return DeliveryResult(True)


@dataclass
class Channels:
    """The channel for each channel name."""

    by_name: dict[str, Channel] = field(default_factory=dict)

    def get(self, name: str) -> Channel | None:
        return self.by_name.get(name)
