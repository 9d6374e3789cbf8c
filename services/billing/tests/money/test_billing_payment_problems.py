"""Payment problems reach staff: an amount mismatch and a burst of forged notifications each open a review
item and, in the same transaction, queue a `PaymentProblem` that the real broker carries to the alarm service
(this test subscribes as alarm would). A problem already under review is not announced twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_billing.adapters.payments.sandbox import Sandbox
from shuidian_billing.adapters.payments.signing import new_private_key
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_devstack.pytest_plugin import eventually
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.contracts.payments import PaymentProblem, PaymentProblemKind

pytestmark = pytest.mark.integration
BURST = 3


@dataclass
class World:
    client: httpx.AsyncClient
    sandbox: Sandbox
    heard: list[PaymentProblem]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(pg_server_url: str, mqtt_url: str) -> AsyncIterator[World]:
    name = f"shuidian_problems_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    pem = new_private_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"problems-{uuid.uuid4().hex[:6]}",
        sandbox_private_key=SecretStr(pem),
        sandbox_apiv3_key=SecretStr(uuid.uuid4().hex),
        order_sweep_seconds=0,
        forged_burst_threshold=BURST,
    )
    app: FastAPI = create_app(settings)
    heard: list[PaymentProblem] = []
    address = BrokerAddress.parse(mqtt_url)

    async def listen(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(address.host, address.port) as alarm:
            await alarm.subscribe(topics.payment_problems("sandbox"), qos=1)
            ready.set()
            async for message in alarm.messages:
                assert isinstance(message.payload, bytes)
                heard.append(PaymentProblem.model_validate_json(message.payload))

    ready = asyncio.Event()
    listener = asyncio.create_task(listen(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with app.router.lifespan_context(app), client_of(app) as client:
            yield World(client, Sandbox.from_settings(settings), heard)
    finally:
        listener.cancel()
        await infra.drop_database(pg_server_url, name)


async def _order(world: World, amount: str) -> tuple[str, dict[str, str]]:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    assert (await world.client.put(f"/v1/accounts/{account}", json={"name": "测试住户"})).status_code == 204
    created = await world.client.post(
        "/v1/payments/orders",
        json={"provider": "sandbox", "account_id": account, "amount": amount},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert created.status_code == 201, created.text
    return account, created.json()


async def test_an_amount_mismatch_is_held_for_review_and_announced_once(world: World) -> None:
    account, order = await _order(world, "50.00")
    txn = f"4200{uuid.uuid4().int % 10**20:020d}"
    headers, body = world.sandbox.notification(
        order_id=order["order_id"], transaction_id=txn, total_fen=4900, now=datetime.now(UTC)
    )
    first = await world.client.post("/v1/payments/notify/sandbox", content=body, headers=headers)
    again = await world.client.post("/v1/payments/notify/sandbox", content=body, headers=headers)
    assert (first.status_code, first.json()["code"]) == (409, "amount_mismatch")
    assert again.status_code == 409
    reviews = (await world.client.get("/v1/payments/reviews")).json()
    [item] = [r for r in reviews if r["subject"] == f"sandbox:{txn}"]
    assert (item["kind"], Decimal(item["amount"]), item["account_id"]) == (
        "callback_amount_mismatch",
        Decimal(49),
        account,
    )

    async def announced() -> list[PaymentProblem] | None:
        return [p for p in world.heard if p.subject == f"sandbox:{txn}"] or None

    [problem] = await eventually(announced, "the amount mismatch announced to alarm")
    assert problem.kind is PaymentProblemKind.AMOUNT_MISMATCH
    assert (problem.review_id, problem.account_id, problem.amount) == (item["review_id"], account, Decimal("49.00"))
    await asyncio.sleep(0.5)  # the replay opened nothing and announced nothing
    assert len(await announced() or []) == 1
    assert (await world.client.get(f"/v1/accounts/{account}")).json()["balance"] == "0.00"


async def test_a_burst_of_forged_notifications_opens_one_review_item_and_one_announcement(world: World) -> None:
    for n in range(BURST + 2):
        forged = await world.client.post(
            "/v1/payments/notify/sandbox",
            content=b'{"resource":{}}',
            headers={
                "Wechatpay-Timestamp": str(int(datetime.now(UTC).timestamp())),
                "Wechatpay-Nonce": f"nonce-{n}",
                "Wechatpay-Serial": "SANDBOX-PLATFORM-1",
                "Wechatpay-Signature": "Zm9yZ2Vk",
            },
        )
        assert (forged.status_code, forged.json()["code"]) == (400, "callback_bad_signature")

    async def announced() -> list[PaymentProblem] | None:
        return [p for p in world.heard if p.kind is PaymentProblemKind.FORGED_NOTIFICATIONS] or None

    [problem] = await eventually(announced, "the forged burst announced to alarm")
    assert problem.subject.startswith("sandbox:forged:")
    reviews = (await world.client.get("/v1/payments/reviews")).json()
    [item] = [r for r in reviews if r["kind"] == "callback_forged"]
    assert item["review_id"] == problem.review_id
    assert item["detail"]["refused"] >= BURST
    dismissed = await world.client.post(f"/v1/payments/reviews/{item['review_id']}/assign", json={"account_id": "x"})
    assert (dismissed.status_code, dismissed.json()["code"]) == (409, "review_not_creditable")
