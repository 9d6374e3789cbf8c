"""One MQTT connection per service: reconnects with jittered back-off, typed subscriptions, last will.

Delivery is effectively once: a QoS 1 message is acknowledged to the broker only after the work it
caused is done (manual acknowledgement), so a crash, a failover or a database outage before that
point makes the broker deliver it again (to this persistent session, or to another member of a
shared subscription). Handlers are therefore idempotent, and they run one message at a time in
arrival order. A handler may return an awaitable instead of finishing the work itself (billing
queues batches to bill several in one transaction): the message is acknowledged when that
awaitable completes, and the dispatcher meanwhile carries on with the next message.

A handler that fails transiently (database or broker away, deadlock; see `shuidian_kit.retry`) is
retried in place with back-off for as long as it takes; one that fails otherwise is retried a few
times and then parked, with a payload that does not validate, in the service's dead-letter table
(`shuidian_kit.deadletters`), and only then acknowledged. Nothing is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ValidationError

from shuidian_kit.deadletters import DeadLetter, DeadLetters
from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.retry import backoff, is_transient
from shuidian_shared import topics
from shuidian_shared.messages import ServiceStatus

log = logging.getLogger(__name__)

RECEIVED = Counter("shuidian_mqtt_messages_received_total", "MQTT messages received", ["service"])
INVALID = Counter("shuidian_mqtt_messages_invalid_total", "MQTT payloads that failed validation", ["service"])
HANDLER_ERRORS = Counter("shuidian_mqtt_handler_errors_total", "MQTT handlers that raised", ["service"])
PUBLISHED = Counter("shuidian_mqtt_messages_published_total", "MQTT messages published", ["service"])
CONNECTED = Gauge("shuidian_mqtt_connected", "1 while the broker connection is up", ["service"])
RETRIES = Counter("shuidian_mqtt_handler_retries_total", "handler runs retried", ["service", "kind"])
UNACKED = Gauge("shuidian_mqtt_unacknowledged", "messages received whose work is not yet done", ["service"])

# A handler returns None once its work is done, or an awaitable that completes when it is (the
# message is acknowledged then); either way, raising means the work did not happen.
Handler = Callable[[Any, str], Awaitable[Any]]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """mqtt://[user:password@]host[:1883], or mqtts://…[:8883] for TLS."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
            raise ValueError(f"MQTT_URL must look like mqtt://host:port or mqtts://host:port, got {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


def tls_context(
    address: BrokerAddress, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | None:
    """The TLS context of an mqtts:// broker: its certificate checked against `ca_file` (or the system's
    CAs) and its host name, and the service's client certificate offered when given. None for mqtt://."""
    if not address.tls:
        if ca_file or cert_file or key_file:
            raise ValueError("MQTT TLS files are set but MQTT_URL is not mqtts://")
        return None
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


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
        backoff_max: float = 5.0,
        max_inflight: int = 100,
        handler_attempts: int = 3,
        tls_ca_file: Path | None = None,
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        # Built here, so a missing or unreadable certificate stops the service at start.
        self._tls = tls_context(self.address, tls_ca_file, tls_cert_file, tls_key_file)
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
        self._handler_attempts = handler_attempts
        self._settling: set[asyncio.Task[None]] = set()
        # Where messages that cannot be processed are parked; the runtime sets it once the database is up.
        self.dead_letters: DeadLetters | None = None

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
                tls_context=self._tls,
                identifier=self.client_id,
                clean_session=self._clean_session,
                keepalive=30,
                max_inflight_messages=self._max_inflight,
                will=aiomqtt.Will(self._status_topic, self._status(False), qos=1, retain=True),
            )
            # Batched QoS 1 publishes (outbox, store-and-forward) are awaited together on purpose;
            # the library's default warns from 10 pending calls, which is noise, not a symptom.
            client.pending_calls_threshold = 10 * self._max_inflight
            # aiomqtt has no option for it, so paho's own switch: we acknowledge once the work is done.
            client._client.manual_ack_set(True)
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
                            await self._dispatch(client, message)
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

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        RECEIVED.labels(self.service).inc()
        outcomes: list[Awaitable[Any]] = []
        for sub in self._subscriptions:
            if not message.topic.matches(sub.match_filter):
                continue
            if sub.accept is not None and not sub.accept(message.topic.value):
                continue
            try:
                decoded = sub.model.model_validate_json(_payload(message))
            except ValidationError as err:
                INVALID.labels(self.service).inc()
                await self._park(message.topic.value, _payload(message), "invalid_payload", _first_error(err), 1)
                continue
            outcome = await self._handle(sub, decoded, message.topic.value, _payload(message))
            if outcome is not None:
                outcomes.append(outcome)
        if not outcomes:
            self._ack(client, message)
            return
        UNACKED.labels(self.service).inc()
        task = asyncio.create_task(self._settle(client, message, outcomes))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _handle(self, sub: _Subscription, decoded: Any, topic: str, payload: bytes) -> Awaitable[Any] | None:
        """Run a handler until it succeeds: transient failures for as long as it takes, others a few
        times before the message is parked. Returns the handler's pending completion, if any."""
        attempt = failures = 0
        while True:
            attempt += 1
            try:
                result = await sub.handler(decoded, topic)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                HANDLER_ERRORS.labels(self.service).inc()
                transient = is_transient(err)
                failures += not transient
                if failures >= self._handler_attempts:
                    log.exception("handler for %s failed on %s %d times", sub.topic_filter, topic, failures)
                    await self._park(topic, payload, "handler_failed", _describe(err), attempt)
                    return None
                RETRIES.labels(self.service, "transient" if transient else "error").inc()
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "handler for %s failed on %s (try %d), retrying: %s",
                        sub.topic_filter,
                        topic,
                        attempt,
                        _describe(err),
                    )
                await asyncio.sleep(backoff(attempt))
                continue
            return result if inspect.isawaitable(result) else None

    async def _settle(self, client: aiomqtt.Client, message: aiomqtt.Message, outcomes: list[Awaitable[Any]]) -> None:
        """Acknowledge a message once the work its handlers handed on is done (or parked)."""
        try:
            for outcome in outcomes:
                try:
                    await outcome
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    # The pipeline behind the handler already retried what retrying could cure.
                    HANDLER_ERRORS.labels(self.service).inc()
                    await self._park(message.topic.value, _payload(message), "handler_failed", _describe(err), 1)
            self._ack(client, message)
        finally:
            UNACKED.labels(self.service).dec()

    async def _park(self, topic: str, payload: bytes, reason: str, error: str, attempts: int) -> None:
        """Park a message as a dead letter, waiting out a database outage (it is not acknowledged before)."""
        if self.dead_letters is None:
            log.error("no dead-letter table: dropped message on %s (%s): %s", topic, reason, error)
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.dead_letters.park(topic, payload, reason=reason, error=error, attempts=attempts)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if attempt == 1:
                    log.warning("cannot park a dead letter on %s yet: %s", topic, _describe(err))
                await asyncio.sleep(backoff(attempt))

    def _ack(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        # A message received on an earlier connection is the broker's again: it redelivers it to
        # the persistent session (or another group member), and the idempotent handler skips it.
        if message.qos > 0 and self._client is client:
            client._client.ack(message.mid, message.qos)

    async def replay(self, letter: DeadLetter) -> None:
        """Run a parked message through its handler again, once; raises if it fails again."""
        topic = aiomqtt.Topic(letter.topic)
        matched = False
        for sub in self._subscriptions:
            if not topic.matches(sub.match_filter):
                continue
            matched = True
            result = await sub.handler(sub.model.model_validate_json(letter.payload), letter.topic)
            if inspect.isawaitable(result):
                await result
        if not matched:
            raise LookupError(f"no subscription of {self.service} matches {letter.topic}")

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


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    return payload if isinstance(payload, bytes) else str(payload).encode()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']} ({err.error_count()} error(s))"
