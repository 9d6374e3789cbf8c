"""SSRF: a webhook cannot make the gateway call an internal address, neither when subscribed (422)
nor when delivered (the connection is refused, the receiver never hears a byte)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request
from sqlalchemy import text

from shuidian_gateway.testing import Harness, alarm_event, free_port, gateway_harness, serve
from shuidian_kit.mqtt import BrokerAddress
from shuidian_kit.service import Runtime
from shuidian_shared import topics

pytestmark = pytest.mark.integration

INTERNAL = [
    "http://127.0.0.1:8002/v1/payments/sandbox/pay",
    "http://localhost:8002/v1/accounts",
    "http://[::1]:8002/",
    "http://[::ffff:127.0.0.1]:8002/",
    "http://2130706433:8002/",
    "http://10.0.0.5/hook",
    "http://192.168.1.20/hook",
    "http://100.64.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://0.0.0.0:8002/",
    "https://user:secret@8.8.8.8/hook",
]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url, webhook_backoff_seconds=0.05, webhook_poll_seconds=0.1) as h:
        yield h


@pytest.mark.parametrize("url", INTERNAL)
async def test_a_subscription_to_an_internal_address_is_refused(gw: Harness, url: str) -> None:
    async with gw.client("admin") as admin:
        refused = await admin.post("/v1/webhooks", json={"url": url, "events": ["balance"]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "url_not_allowed"
    assert "GATEWAY_WEBHOOK_ALLOWED_NETWORKS" in refused.json()["detail"]


async def test_changing_a_subscription_to_an_internal_address_is_refused(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        created = await admin.post("/v1/webhooks", json={"url": "https://hooks.invalid/x", "events": ["alarm"]})
        assert created.status_code == 201
        hook = created.json()["webhook_id"]
        moved = await admin.patch(f"/v1/webhooks/{hook}", json={"url": "http://169.254.169.254/"})
        assert moved.status_code == 422
        assert (await admin.get(f"/v1/webhooks/{hook}")).json()["url"] == "https://hooks.invalid/x"
        await admin.delete(f"/v1/webhooks/{hook}")


async def test_a_delivery_to_an_address_that_became_internal_is_refused(gw: Harness, mqtt_url: str) -> None:
    """The name was not internal when subscribed; by delivery it points at loopback (DNS changed, or
    a row written before the check existed). The delivery-time guard refuses the connection."""
    received: list[bytes] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, str]:
        received.append(await request.body())
        return {}

    port = free_port()
    runtime: Runtime = gw.app.state.container.runtime
    async with serve(receiver, port), gw.client("admin") as admin:
        created = await admin.post("/v1/webhooks", json={"url": "https://hooks.invalid/x", "events": ["alarm"]})
        hook_id = created.json()["webhook_id"]
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text("UPDATE gateway.webhooks SET url = :u WHERE webhook_id = :id"),
                {"u": f"http://localhost:{port}/hook", "id": uuid.UUID(hook_id)},
            )
        gw.app.state.container.webhooks.invalidate()
        alarm = alarm_event("A-SSRF")
        address = BrokerAddress.parse(mqtt_url)
        async with aiomqtt.Client(address.host, address.port, identifier=f"ssrf-{uuid.uuid4().hex[:8]}") as client:
            await client.publish(topics.alarm("balance_exhausted"), alarm.model_dump_json().encode(), qos=1)

        async def refused() -> Any:
            async with runtime.engine.connect() as conn:
                return (
                    await conn.execute(
                        text(
                            "SELECT error FROM gateway.webhook_deliveries WHERE webhook_id = :id AND message_id = :m "
                            "AND error LIKE '%refused%'"
                        ),
                        {"id": uuid.UUID(hook_id), "m": alarm.message_id},
                    )
                ).first()

        async with asyncio.timeout(20):
            while (row := await refused()) is None:
                await asyncio.sleep(0.05)
        await admin.delete(f"/v1/webhooks/{hook_id}")
    assert "loopback" in row.error
    assert received == []
