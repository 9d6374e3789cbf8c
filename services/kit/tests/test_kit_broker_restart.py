"""A broker killed (SIGKILL) and restarted keeps a consumer's persistent session: what is published
after the restart, before the consumer is back, waits for it instead of going nowhere. Needs a real
mosquitto (the settings under test are its persistence settings)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import uuid
from pathlib import Path

import aiomqtt
import pytest

from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import balance_event
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.supervisor import Supervisor
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()), reason="needs mosquitto"
    ),
]
REPO = Path(__file__).resolve().parents[3]


async def test_a_persistent_session_survives_a_broker_killed_and_restarted(tmp_path: Path) -> None:
    broker = infra.Broker(tmp_path / "broker")
    broker.start()
    account = f"acc-{uuid.uuid4().hex[:8]}"
    topic = topics.balance(account)
    received: list[int] = []

    async def handler(message: BalanceEvent, _topic: str) -> None:
        received.append(message.sequence)

    link = MqttLink(broker.url, service="kit-test", instance="stable", clean_session=False, backoff_max=0.5)
    link.subscribe(topic, BalanceEvent, handler)
    supervisor = Supervisor("restart")
    supervisor.add("mqtt", link.run)
    try:
        async with supervisor:
            await link.wait_connected(10)
            await asyncio.sleep(2.5)  # past the broker's next save of its sessions
            assert broker.process is not None
            os.killpg(broker.process.pid, signal.SIGKILL)
            broker.process.wait()
            broker.start()  # same port and data directory; the consumer is still reconnecting
            async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
                for sequence in (1, 2, 3):
                    await publisher.publish(topic, balance_event(account, sequence).model_dump_json().encode(), qos=1)
            async with asyncio.timeout(20):
                while received != [1, 2, 3]:
                    await asyncio.sleep(0.05)
    finally:
        broker.stop()
    assert received == [1, 2, 3]


def test_the_deployed_broker_has_the_settings_delivery_depends_on() -> None:
    """deploy/mosquitto/mosquitto.conf and the test broker agree on every durability setting but how
    often the broker saves (production saves less often: the file holds every retained state)."""
    deployed = dict(
        line.split(None, 1)
        for line in (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    tested = dict(line.split(None, 1) for line in infra.MOSQUITTO_DURABILITY.splitlines())
    assert {k: deployed.get(k) for k in tested if k != "autosave_interval"} == {
        k: v for k, v in tested.items() if k != "autosave_interval"
    }
    assert int(deployed["autosave_interval"]) <= 60
