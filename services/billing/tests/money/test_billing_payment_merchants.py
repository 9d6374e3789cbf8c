"""Per-estate merchants: an operator runs a second WeChat Pay merchant for one estate (BILLING_MERCHANTS, its
secrets from the environment and a mounted file). An order of that estate is opened, paid, swept and refunded
with that merchant's keys at its own emulator; the default merchant keeps every other estate; a notification
that merchant X signed for an order of an estate merchant Y serves is refused, held for review and announced.
Configuration mistakes fail the start."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_billing.adapters.payments.online import OnlinePayments, Providers
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_devstack.providers.wechat import WechatOrder, WechatPayEmulator

pytestmark = pytest.mark.integration

DEFAULT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NORTH_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
APP_ID = "wx8888888888888888"
DEFAULT_MCH, NORTH_MCH = "1900000109", "1900000222"
SERIAL = "3775B6A45ACD588826D15E583A95F5DD28F4A1C3"


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass
class World:
    client: httpx.AsyncClient
    app: FastAPI
    default: WechatPayEmulator
    north: WechatPayEmulator
    settings: BillingSettings

    @property
    def online(self) -> OnlinePayments:
        online: OnlinePayments = self.app.state.container.channels.online
        return online


def settings_for(
    database_url: str,
    mqtt_url: str,
    default: WechatPayEmulator,
    north: WechatPayEmulator,
    ports: tuple[int, int],
    tmp: Path,
) -> BillingSettings:
    platform_file = tmp / "north-platform.pem"  # as a mounted secret
    platform_file.write_text(public_pem(north.platform_key))
    merchants = {
        "north": {
            "estates": ["EN"],
            "wechat_app_id": APP_ID,
            "wechat_mch_id": NORTH_MCH,
            "wechat_apiv3_key": "env:TEST_NORTH_APIV3_KEY",
            "wechat_platform_public_key": str(platform_file),
            "wechat_platform_serial": north.platform_serial,
            "wechat_merchant_private_key": pem(NORTH_KEY),
            "wechat_merchant_serial": SERIAL,
            "wechat_api_base": f"http://127.0.0.1:{ports[1]}",
        }
    }
    return BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"merchants-{uuid.uuid4().hex[:6]}",
        wechat_app_id=APP_ID,
        wechat_mch_id=DEFAULT_MCH,
        wechat_apiv3_key=SecretStr(default.apiv3_key),
        wechat_platform_public_key=public_pem(default.platform_key),
        wechat_platform_serial=default.platform_serial,
        wechat_merchant_private_key=SecretStr(pem(DEFAULT_KEY)),
        wechat_merchant_serial=SERIAL,
        wechat_api_base=f"http://127.0.0.1:{ports[0]}",
        wechat_notify_url="https://gateway.example/v1/payments/notify/wechat",
        merchants=json.dumps(merchants),
        order_sweep_seconds=0,
        order_query_after_seconds=0,
    )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(database_url: str, mqtt_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    default = WechatPayEmulator(APP_ID, DEFAULT_MCH, DEFAULT_KEY.public_key(), SERIAL)
    north = WechatPayEmulator(APP_ID, NORTH_MCH, NORTH_KEY.public_key(), SERIAL)
    ports = (infra.free_port(), infra.free_port())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEST_NORTH_APIV3_KEY", north.apiv3_key)
        settings = settings_for(database_url, mqtt_url, default, north, ports, tmp_path_factory.mktemp("secrets"))
        app = create_app(settings)
        async with (
            infra.serve_app(default.app(), ports[0]),
            infra.serve_app(north.app(), ports[1]),
            app.router.lifespan_context(app),
            client_of(app) as client,
        ):
            for estate in ("EN", "ES"):
                assert (await client.put(f"/v1/estates/{estate}", json={"name": estate})).status_code in (200, 204)
            yield World(client, app, default, north, settings)


async def account_in(client: httpx.AsyncClient, estate: str) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    put = await client.put(f"/v1/accounts/{account}", json={"name": "住户", "estate_id": estate})
    assert put.status_code == 204, put.text
    return account


async def create(client: httpx.AsyncClient, account: str, amount: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/payments/orders",
        json={"provider": "wechat", "account_id": account, "amount": amount},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def balance(client: httpx.AsyncClient, account: str) -> Decimal:
    return Decimal((await client.get(f"/v1/accounts/{account}")).json()["balance"])


async def test_an_order_of_the_north_estate_lives_its_whole_life_with_the_north_merchant(world: World) -> None:
    account = await account_in(world.client, "EN")
    order = await create(world.client, account, "30.00")
    assert order["order_id"] in world.north.orders
    assert order["order_id"] not in world.default.orders
    assert world.north.orders[order["order_id"]].mchid == NORTH_MCH
    headers, body = world.north.pay(order["order_id"])
    paid = await world.client.post("/v1/payments/notify/wechat", content=body, headers=headers)
    assert (paid.status_code, paid.json()["outcome"]) == (200, "accepted")
    assert await balance(world.client, account) == Decimal("30.00")
    # A lost notification is found by the sweeper asking the right merchant.
    lost = await create(world.client, account, "12.00")
    world.north.pay(lost["order_id"])
    await world.online.sweep(datetime.now(UTC))
    assert await balance(world.client, account) == Decimal("42.00")
    # And the refund goes back through the merchant that took the money.
    payment_id = paid.json()["payment"]["payment_id"]
    refund = await world.client.post(
        f"/v1/payments/{payment_id}/refunds",
        json={"amount": "5.00", "reason": "test"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert refund.status_code == 201, refund.text
    assert refund.json()["provider_status"] == "processing"
    assert [r.out_trade_no for r in world.north.refunds.values()] == [order["order_id"]]
    assert world.default.refunds == {}


async def test_the_default_merchant_keeps_every_other_estate(world: World) -> None:
    account = await account_in(world.client, "ES")
    order = await create(world.client, account, "8.00")
    assert order["order_id"] in world.default.orders
    headers, body = world.default.pay(order["order_id"])
    paid = await world.client.post("/v1/payments/notify/wechat", content=body, headers=headers)
    assert paid.json()["outcome"] == "accepted"
    north_methods = (
        await world.client.get("/v1/payments/methods", params={"account_id": await account_in(world.client, "EN")})
    ).json()
    assert [m["provider"] for m in north_methods] == ["wechat", "sandbox"]


async def test_a_merchant_crediting_an_account_of_another_merchants_estate_is_refused_and_held(world: World) -> None:
    account = await account_in(world.client, "ES")  # the default merchant's estate
    order = await create(world.client, account, "20.00")
    # The north merchant (ours, but not this estate's) notifies a payment of that order, signed with its keys.
    world.north.orders[order["order_id"]] = WechatOrder(order["order_id"], APP_ID, NORTH_MCH, 2000, "NATIVE", "")
    headers, body = world.north.pay(order["order_id"])
    refused = await world.client.post("/v1/payments/notify/wechat", content=body, headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (400, "callback_wrong_merchant")
    assert await balance(world.client, account) == Decimal("0.00")
    txn = world.north.orders[order["order_id"]].transaction_id
    [item] = [r for r in (await world.client.get("/v1/payments/reviews")).json() if r["subject"] == f"wechat:{txn}"]
    assert (item["kind"], item["account_id"], item["detail"]["merchant"]) == (
        "callback_wrong_merchant",
        account,
        "north",
    )
    log = (await world.client.get("/v1/payments/callbacks", params={"outcome": "rejected"})).json()
    assert any(c["provider_txn_id"] == txn and "callback_wrong_merchant" in c["reason"] for c in log)


@pytest.mark.parametrize(
    ("merchants", "problem"),
    [
        ({"a": {"estates": ["E1"]}, "b": {"estates": ["E1"]}}, "served by a and b"),
        ({"a": {"wechat_apiv3_key": "env:SHUIDIAN_NO_SUCH_VARIABLE"}}, "SHUIDIAN_NO_SUCH_VARIABLE is not set"),
        ({"a": {"wechat_app_id": "wx1", "wechat_platform_public_key": "not a key"}}, "payment provider settings"),
        ({"a": {"wechat_api_key": "typo"}}, "unknown settings"),
        ({"default": {}}, "not a merchant name"),
    ],
)
def test_a_bad_merchant_configuration_fails_the_start(world: World, merchants: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Providers.from_settings(world.settings.model_copy(update={"merchants": json.dumps(merchants)}))
