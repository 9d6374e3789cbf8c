"""The deployment's broker: nobody signs in anonymously, each service publishes and subscribes only its own
topics, integrators only read, and the kit's client reaches it over TLS (CA-verified, optionally with a
client certificate as its identity)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from shuidian_kit.errors import MqttUnavailable
from shuidian_kit.mqtt import BrokerAddress, MqttLink
from shuidian_shared import topics

from .conftest import Broker, make_tls

pytestmark = pytest.mark.integration


def _client(broker: Broker, user: str | None, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=password if password is not None else (broker.passwords[user] if user else None),
        identifier=f"acl-test-{uuid.uuid4().hex[:8]}",
    )


async def _received(subscriber: aiomqtt.Client, until: bytes, timeout: float = 5.0) -> list[bytes]:
    """Payloads the subscriber receives until `until` arrives (then a moment more for stragglers)."""
    seen: list[bytes] = []

    async def collect() -> None:
        async for message in subscriber.messages:
            seen.append(message.payload if isinstance(message.payload, bytes) else str(message.payload).encode())
            if seen[-1] == until:
                return

    await asyncio.wait_for(collect(), timeout)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), 0.5)
    return seen


async def test_an_anonymous_client_or_a_wrong_password_is_refused(deploy_broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with _client(deploy_broker, None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with _client(deploy_broker, "billing", password="not-the-password"):
            pass
    async with _client(deploy_broker, "billing"):  # the right one signs in
        pass


@pytest.mark.parametrize(
    ("intruder", "owner", "reader", "topic"),
    [
        ("collector", "billing", "control", topics.balance("acct-1")),  # a balance only billing announces
        ("billing", "control", "collector", topics.meter_command("E-1")),  # a trip only control orders
        ("control", "collector", "billing", topics.readings("gw-1")),  # readings only the collector takes
        ("integrator", "alarm", "gateway", topics.alarm("leak")),  # integrators read, never publish
        ("billing", "insights", "alarm", topics.line_loss("bldg-1")),  # line loss only insights reports
        ("insights", "collector", "billing", topics.readings("gw-1")),  # insights reads readings, never writes
    ],
)
async def test_a_publish_outside_the_publishers_acl_never_reaches_a_reader(
    deploy_broker: Broker, intruder: str, owner: str, reader: str, topic: str
) -> None:
    async with _client(deploy_broker, reader) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        async with _client(deploy_broker, intruder) as bad, _client(deploy_broker, owner) as good:
            await bad.publish(topic, b"forged", qos=1)
            await good.publish(topic, b"genuine", qos=1)
        assert await _received(subscriber, b"genuine") == [b"genuine"]


async def test_a_subscriber_outside_the_acl_receives_nothing(deploy_broker: Broker) -> None:
    # Mosquitto grants the subscription and filters each delivery by the reader's ACL.
    reading, balance = topics.readings("gw-1"), topics.balance("acct-2")
    async with _client(deploy_broker, "control") as control:
        await control.subscribe(topics.ALL_READINGS, qos=1)
        await control.subscribe(topics.shared("control", topics.ALL_BALANCES), qos=1)
        async with _client(deploy_broker, "collector") as collector, _client(deploy_broker, "billing") as billing:
            await collector.publish(reading, b"reading", qos=1)
            await billing.publish(balance, b"balance", qos=1)
        assert await _received(control, b"balance") == [b"balance"]


@contextlib.asynccontextmanager
async def _running(link: MqttLink) -> AsyncIterator[MqttLink]:
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _link(url: str, *, ca: Path, cert: tuple[Path, Path] | None = None) -> MqttLink:
    return MqttLink(
        url,
        service="billing",
        instance=uuid.uuid4().hex[:8],
        tls_ca_file=ca,
        tls_cert_file=cert[0] if cert else None,
        tls_key_file=cert[1] if cert else None,
    )


async def _delivered_through(deploy_broker: Broker, link: MqttLink) -> list[bytes]:
    """Publish a balance through `link` and then one as billing over plain MQTT; what control receives."""
    topic = topics.balance(f"acct-{uuid.uuid4().hex[:6]}")
    async with _client(deploy_broker, "control") as subscriber:
        await subscriber.subscribe(topic, qos=1)
        await link.publish(topic, b"over-tls", timeout=5)
        async with _client(deploy_broker, "billing") as plain:
            await plain.publish(topic, b"marker", qos=1)
        return await _received(subscriber, b"marker")


async def test_the_kit_client_signs_in_over_tls_verifying_the_broker(deploy_broker: Broker) -> None:
    address = BrokerAddress.parse(deploy_broker.url("billing", tls=True))
    assert address.tls
    assert address.port == deploy_broker.tls_port
    async with _running(_link(deploy_broker.url("billing", tls=True), ca=deploy_broker.tls.ca)) as link:
        await link.wait_connected(10)
        assert await _delivered_through(deploy_broker, link) == [b"over-tls", b"marker"]


async def test_the_kit_client_refuses_a_broker_its_ca_does_not_vouch_for(deploy_broker: Broker, tmp_path: Path) -> None:
    other = make_tls(tmp_path / "other")
    async with _running(_link(deploy_broker.url("billing", tls=True), ca=other.ca)) as link:
        with pytest.raises(MqttUnavailable):
            await link.wait_connected(3)


async def test_a_client_certificate_is_the_broker_user_and_its_acl_applies(deploy_broker: Broker) -> None:
    url = f"mqtts://127.0.0.1:{deploy_broker.cert_port}"
    tls = deploy_broker.tls
    async with _running(_link(url, ca=tls.ca, cert=tls.client("billing"))) as billing:
        await billing.wait_connected(10)
        assert await _delivered_through(deploy_broker, billing) == [b"over-tls", b"marker"]
    async with _running(_link(url, ca=tls.ca, cert=tls.client("stranger"))) as stranger:
        await stranger.wait_connected(10)  # a valid certificate, but the ACL grants "stranger" nothing
        assert await _delivered_through(deploy_broker, stranger) == [b"marker"]
    async with _running(_link(url, ca=tls.ca)) as nobody:
        with pytest.raises(MqttUnavailable):
            await nobody.wait_connected(3)


def test_tls_files_without_an_mqtts_url_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mqtts"):
        MqttLink("mqtt://127.0.0.1:1883", service="billing", instance="x", tls_ca_file=tmp_path / "ca.crt")
    assert BrokerAddress.parse("mqtts://broker").port == 8883
    assert BrokerAddress.parse("mqtt://broker").port == 1883
