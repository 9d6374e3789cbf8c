"""One MQTT connection per service: reconnects with jittered back-off, typed subscriptions, last will.

Handlers run one message at a time in arrival order. A payload that does not validate, or a
handler that raises, is logged and counted and the listener carries on: bad input never kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ValidationError

from shuidian_kit.errors import MqttUnavailable
from shuidian_shared import topics
from shuidian_shared.messages import ServiceStatus

log = logging.getLogger(__name__)

RECEIVED = Counter("shuidian_mqtt_messages_received_total", "MQTT messages received", ["service"])
INVALID = Counter("shuidian_mqtt_messages_invalid_total", "MQTT payloads that failed validation", ["service"])
HANDLER_ERRORS = Counter("shuidian_mqtt_handler_errors_total", "MQTT handlers that raised", ["service"])
PUBLISHED = Counter("shuidian_mqtt_messages_published_total", "MQTT messages published", ["service"])
CONNECTED = Gauge("shuidian_mqtt_connected", "1 while the broker connection is up", ["service"])

Handler = Callable[[Any, str], Awaitable[None]]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"MQTT_URL must look like mqtt://host:port, got {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass(frozen=True)
class _Subscription:
    topic_filter: str
    model: type[BaseModel]
    handler: Handler
    qos: int
    accept: Callable[[str], bool] | None = None

    @property
    def match_filter(self) -> str:
        # "$share/<group>/<filter>" delivers topics that match <filter>.
        if self.topic_filter.startswith("$share/"):
            return self.topic_filter.split("/", 2)[2]
        return self.topic_filter


class MqttLink:
    """The service's single broker connection; `run()` is a supervised loop that never returns."""

    def __init__(
        self,
        url: str,
        *,
        service: str,
        instance: str,
        clean_session: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_inflight: int = 100,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.service = service
        self.instance = instance
        self.client_id = f"{service}-{instance}"[:64]
        self._clean_session = clean_session
        self._backoff = (backoff_initial, backoff_max)
        self._max_inflight = max_inflight
        self._subscriptions: list[_Subscription] = []
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._status_topic = topics.service_status(service, instance)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(
        self,
        topic_filter: str,
        model: type[BaseModel],
        handler: Handler,
        *,
        qos: int = 1,
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        """Register a typed handler; subscriptions are (re)made on every connect. `accept`, when given,
        sees each message's topic first: a message it refuses is dropped before it is decoded."""
        self._subscriptions.append(_Subscription(topic_filter, model, handler, qos, accept))

    def _status(self, online: bool) -> bytes:
        return (
            ServiceStatus(source=self.client_id, service=self.service, instance=self.instance, online=online)
            .model_dump_json()
            .encode()
        )

    async def run(self) -> None:
        delay = self._backoff[0]
        outage_logged = False
        while True:
            client = aiomqtt.Client(
                self.address.host,
                self.address.port,
                username=self.address.username,
                password=self.address.password,
                identifier=self.client_id,
                clean_session=self._clean_session,
                keepalive=30,
                max_inflight_messages=self._max_inflight,
                will=aiomqtt.Will(self._status_topic, self._status(False), qos=1, retain=True),
            )
            # Batched QoS 1 publishes (outbox, store-and-forward) are awaited together on purpose;
            # the library's default warns from 10 pending calls, which is noise, not a symptom.
            client.pending_calls_threshold = 10 * self._max_inflight
            try:
                async with client:
                    self._client = client
                    for sub in self._subscriptions:
                        await client.subscribe(sub.topic_filter, qos=sub.qos)
                    await client.publish(self._status_topic, self._status(True), qos=1, retain=True)
                    self._connected.set()
                    CONNECTED.labels(self.service).set(1)
                    log.info("connected to MQTT broker %s:%s", self.address.host, self.address.port)
                    outage_logged = False
                    delay = self._backoff[0]
                    try:
                        async for message in client.messages:
                            await self._dispatch(message)
                    finally:
                        with contextlib.suppress(aiomqtt.MqttError):
                            await client.publish(self._status_topic, self._status(False), qos=1, retain=True)
            except aiomqtt.MqttError as err:
                if not outage_logged:
                    log.warning(
                        "MQTT broker %s:%s unreachable (%s); retrying", self.address.host, self.address.port, err
                    )
                    outage_logged = True
            finally:
                self._client = None
                self._connected.clear()
                CONNECTED.labels(self.service).set(0)
            # Full jitter: many services restarting together must not reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        RECEIVED.labels(self.service).inc()
        for sub in self._subscriptions:
            if not message.topic.matches(sub.match_filter):
                continue
            if sub.accept is not None and not sub.accept(message.topic.value):
                continue
            try:
                decoded = sub.model.model_validate_json(message.payload)
            except ValidationError as err:
                INVALID.labels(self.service).inc()
                log.warning("dropped invalid %s on %s: %s", sub.model.__name__, message.topic, _first_error(err))
                continue
            try:
                await sub.handler(decoded, message.topic.value)
            except asyncio.CancelledError:
                raise
            except Exception:
                HANDLER_ERRORS.labels(self.service).inc()
                log.exception("handler for %s failed on %s", sub.topic_filter, message.topic)

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError as err:
            raise MqttUnavailable(f"no broker connection within {timeout}s") from err

    async def publish(
        self, topic: str, message: BaseModel | bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish, waiting up to `timeout` for a connection; raises MqttUnavailable otherwise."""
        payload = message if isinstance(message, bytes) else message.model_dump_json().encode()
        await self.wait_connected(timeout)
        client = self._client
        if client is None:
            raise MqttUnavailable("broker connection dropped")
        try:
            await asyncio.wait_for(client.publish(topic, payload, qos=qos, retain=retain), timeout)
        except (aiomqtt.MqttError, TimeoutError) as err:
            raise MqttUnavailable(f"publish to {topic} failed: {err}") from err
        PUBLISHED.labels(self.service).inc()


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']} ({err.error_count()} error(s))"
