"""Billing talking to the payment providers for real: WeChat Pay v3 and Alipay emulators on their own
ports with throwaway keys verify every request billing signs and sign every answer and notification;
billing runs on real PostgreSQL. Create → pay → notify; notification lost → the sweeper credits;
duplicates and late notifications converge on one credit; amount mismatches are held for review;
expired orders are closed at the provider; forged answers and bad keys are refused."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_billing.adapters.payments.clients import ProviderUnavailable
from shuidian_billing.adapters.payments.online import OnlinePayments, Providers
from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.billing_harness import client_of
from shuidian_devstack.providers.alipay import BILL_HEADER as ALIPAY_BILL
from shuidian_devstack.providers.alipay import AlipayEmulator
from shuidian_devstack.providers.wechat import BILL_HEADER as WECHAT_BILL
from shuidian_devstack.providers.wechat import WechatPayEmulator

pytestmark = pytest.mark.integration

MERCHANT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALIPAY_APP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MCH_ID, APP_ID, MERCHANT_SERIAL = "1900000109", "wx8888888888888888", "3775B6A45ACD588826D15E583A95F5DD28F4A1C3"
ALIPAY_APP = "2021000000000001"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


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
    wechat: WechatPayEmulator
    alipay: AlipayEmulator
    settings: BillingSettings

    @property
    def online(self) -> OnlinePayments:
        online: OnlinePayments = self.app.state.container.channels.online
        return online


def settings_for(
    database_url: str, mqtt_url: str, wechat: WechatPayEmulator, alipay: AlipayEmulator, wport: int, aport: int
) -> BillingSettings:
    return BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"providers-{uuid.uuid4().hex[:6]}",
        wechat_app_id=APP_ID,
        wechat_mch_id=MCH_ID,
        wechat_apiv3_key=SecretStr(wechat.apiv3_key),
        wechat_platform_public_key=public_pem(wechat.platform_key),
        wechat_platform_serial=wechat.platform_serial,
        wechat_merchant_private_key=SecretStr(pem(MERCHANT_KEY)),
        wechat_merchant_serial=MERCHANT_SERIAL,
        wechat_api_base=f"http://127.0.0.1:{wport}",
        wechat_notify_url="https://gateway.example/v1/payments/notify/wechat",
        alipay_app_id=ALIPAY_APP,
        alipay_seller_id=alipay.seller_id,
        alipay_public_key=public_pem(alipay.alipay_key),
        alipay_app_private_key=SecretStr(pem(ALIPAY_APP_KEY)),
        alipay_gateway_url=f"http://127.0.0.1:{aport}/gateway.do",
        alipay_notify_url="https://gateway.example/v1/payments/notify/alipay",
        order_sweep_seconds=0,  # the tests run the sweeper themselves
        order_query_after_seconds=0,
    )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(database_url: str, mqtt_url: str) -> AsyncIterator[World]:
    wechat = WechatPayEmulator(APP_ID, MCH_ID, MERCHANT_KEY.public_key(), MERCHANT_SERIAL)
    alipay = AlipayEmulator(ALIPAY_APP, ALIPAY_APP_KEY.public_key())
    wport, aport = infra.free_port(), infra.free_port()
    settings = settings_for(database_url, mqtt_url, wechat, alipay, wport, aport)
    app = create_app(settings)
    async with (
        infra.serve_app(wechat.app(), wport),
        infra.serve_app(alipay.app(), aport),
        app.router.lifespan_context(app),
        client_of(app) as client,
    ):
        yield World(client, app, wechat, alipay, settings)


async def new_account(client: httpx.AsyncClient) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/accounts/{account}", json={"name": "测试住户"})).status_code == 204
    return account


async def balance(client: httpx.AsyncClient, account: str) -> Decimal:
    return Decimal((await client.get(f"/v1/accounts/{account}")).json()["balance"])


async def create(client: httpx.AsyncClient, account: str, amount: str, provider: str, **extra: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/payments/orders",
        json={"provider": provider, "account_id": account, "amount": amount, **extra},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def notify_wechat(world: World, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await world.client.post("/v1/payments/notify/wechat", content=body, headers=headers)


async def order_of(world: World, order_id: str) -> dict[str, Any]:
    order: dict[str, Any] = (await world.client.get(f"/v1/payments/orders/{order_id}")).json()
    return order


async def test_wechat_native_order_is_opened_at_the_provider_paid_and_credited_once(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "50.00", "wechat")
    assert order["method"] == "native"
    assert order["status"] == "open"
    assert order["pay"]["code_url"].startswith("weixin://wxpay/bizpayurl")
    # The emulator verified billing's Authorization signature before it opened the order.
    assert ("POST", "/v3/pay/transactions/native") in world.wechat.requests
    assert world.wechat.orders[order["order_id"]].total == 5000
    assert world.wechat.orders[order["order_id"]].notify_url == world.settings.wechat_notify_url
    headers, body = world.wechat.pay(order["order_id"])
    first = await notify_wechat(world, headers, body)
    assert (first.status_code, first.json()["outcome"]) == (200, "accepted")
    again = await notify_wechat(world, headers, body)
    assert again.json()["outcome"] == "replayed"
    assert await balance(world.client, account) == Decimal("50.00")
    paid = await order_of(world, order["order_id"])
    assert (paid["status"], paid["provider_txn_id"]) == ("paid", world.wechat.orders[order["order_id"]].transaction_id)


async def test_wechat_jsapi_gives_a_pay_sign_the_merchant_key_verifies_and_h5_an_h5_url(world: World) -> None:
    account = await new_account(world.client)
    jsapi = await create(world.client, account, "9.90", "wechat", method="jsapi", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    pay = jsapi["pay"]
    assert pay["appId"] == APP_ID
    assert pay["signType"] == "RSA"
    assert pay["package"].startswith("prepay_id=wx")
    message = f"{pay['appId']}\n{pay['timeStamp']}\n{pay['nonceStr']}\n{pay['package']}\n".encode()
    MERCHANT_KEY.public_key().verify(base64.b64decode(pay["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())
    h5 = await create(world.client, account, "9.90", "wechat", method="h5", client_ip="203.0.113.7")
    assert h5["pay"]["h5_url"].startswith("https://wx.tenpay.com/")
    missing = await world.client.post(
        "/v1/payments/orders",
        json={"provider": "wechat", "account_id": account, "amount": "1.00", "method": "jsapi"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert (missing.status_code, missing.json()["code"]) == (422, "openid_required")
    wrong = await world.client.post(
        "/v1/payments/orders",
        json={"provider": "alipay", "account_id": account, "amount": "1.00", "method": "jsapi"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert (wrong.status_code, wrong.json()["code"]) == (422, "unsupported_method")


async def test_lost_notification_is_credited_by_the_sweeper_and_the_late_one_credits_nothing(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "30.00", "wechat")
    headers, body = world.wechat.pay(order["order_id"])  # paid at the provider; the notification is lost
    await world.online.sweep(datetime.now(UTC))
    assert await balance(world.client, account) == Decimal("30.00")
    assert (await order_of(world, order["order_id"]))["status"] == "paid"
    # The provider's late redelivery, and another sweep, credit nothing more.
    late = await notify_wechat(world, headers, body)
    assert late.json()["outcome"] == "replayed"
    await world.online.sweep(datetime.now(UTC))
    assert await balance(world.client, account) == Decimal("30.00")
    callbacks = (await world.client.get("/v1/payments/callbacks", params={"limit": 1000})).json()
    mine = [(c["outcome"], c["remote"]) for c in callbacks if c["order_id"] == order["order_id"]]
    assert mine == [("replayed", "127.0.0.1"), ("accepted", "query")]


async def test_notifications_query_and_replays_racing_credit_once(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "66.00", "wechat")
    headers, body = world.wechat.pay(order["order_id"])
    results = await asyncio.gather(
        *(notify_wechat(world, headers, body) for _ in range(4)),
        world.online.sweep(datetime.now(UTC)),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert await balance(world.client, account) == Decimal("66.00")


async def test_expired_unpaid_order_is_closed_at_the_provider_and_a_payment_after_still_counts(
    world: World,
) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "12.00", "wechat")
    expires = datetime.fromisoformat(order["expires_at"])
    assert timedelta(minutes=29) < expires - datetime.fromisoformat(order["created_at"]) <= timedelta(minutes=30)
    await world.online.sweep(datetime.now(UTC))  # not expired yet: waits
    assert (await order_of(world, order["order_id"]))["status"] == "open"
    await world.online.sweep(expires + timedelta(seconds=1))
    closed = await order_of(world, order["order_id"])
    assert closed["status"] == "expired"
    assert closed["closed_at"] is not None
    assert world.wechat.orders[order["order_id"]].trade_state == "CLOSED"
    # Out of order: the provider's notification of a payment made before the close still credits.
    other = await create(world.client, account, "8.00", "wechat")
    headers, body = world.wechat.pay(other["order_id"])
    await world.online.sweep(datetime.fromisoformat(other["expires_at"]) + timedelta(seconds=1))  # query: paid
    assert (await notify_wechat(world, headers, body)).json()["outcome"] == "replayed"
    assert await balance(world.client, account) == Decimal("8.00")


async def test_an_order_the_provider_closed_is_marked_closed(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "3.00", "wechat")
    world.wechat.orders[order["order_id"]].trade_state = "CLOSED"
    await world.online.sweep(datetime.now(UTC))
    assert (await order_of(world, order["order_id"]))["status"] == "closed"


async def test_amount_mismatch_from_a_query_or_a_notification_is_held_for_review(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "100.00", "wechat")
    headers, body = world.wechat.pay(order["order_id"], total=1000)  # 10.00 paid for a 100.00 order
    await world.online.sweep(datetime.now(UTC))
    response = await notify_wechat(world, headers, body)
    assert (response.status_code, response.json()["code"]) == (409, "amount_mismatch")
    assert await balance(world.client, account) == Decimal("0.00")
    assert (await order_of(world, order["order_id"]))["status"] == "open"
    reviews = (await world.client.get("/v1/payments/reviews")).json()
    held = [r for r in reviews if r["detail"].get("order_id") == order["order_id"]]
    assert [(r["kind"], r["amount"]) for r in held] == [("callback_amount_mismatch", "10.00")]


async def test_wrong_merchant_notification_from_the_provider_is_refused(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "5.00", "wechat")
    world.wechat.pay(order["order_id"])
    emulated = world.wechat.orders[order["order_id"]]
    emulated.mchid = "1900000999"
    headers, body = world.wechat.notification(emulated)
    response = await notify_wechat(world, headers, body)
    assert (response.status_code, response.json()["code"]) == (400, "callback_wrong_merchant")
    assert await balance(world.client, account) == Decimal("0.00")


async def test_alipay_precreate_pay_notify_and_the_sweeper(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "88.80", "alipay")
    assert order["method"] == "precreate"
    assert order["pay"]["qr_code"].startswith("https://qr.alipay.com/")
    assert "alipay.trade.precreate" in world.alipay.requests
    form = world.alipay.pay(order["order_id"])
    first = await world.client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)
    assert (first.status_code, first.text, first.headers["X-Payment-Outcome"]) == (200, "success", "accepted")
    # A second order whose notification is lost: the sweeper's query credits it.
    lost = await create(world.client, account, "11.20", "alipay")
    world.alipay.pay(lost["order_id"])
    await world.online.sweep(datetime.now(UTC))
    assert await balance(world.client, account) == Decimal("100.00")
    again = await world.client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)
    assert again.headers["X-Payment-Outcome"] == "replayed"
    assert await balance(world.client, account) == Decimal("100.00")
    # Nobody scanned a third: once expired it is marked expired (Alipay has no trade to close).
    unscanned = await create(world.client, account, "1.00", "alipay")
    await world.online.sweep(datetime.fromisoformat(unscanned["expires_at"]) + timedelta(seconds=1))
    assert (await order_of(world, unscanned["order_id"]))["status"] == "expired"


async def test_alipay_wap_pay_url_is_signed_so_alipay_accepts_it(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "20.00", "alipay", method="wap")
    url = urlsplit(order["pay"]["pay_url"])
    params = dict(parse_qsl(url.query))
    assert params["method"] == "alipay.trade.wap.pay"
    assert params["notify_url"] == world.settings.alipay_notify_url
    async with httpx.AsyncClient() as phone:
        page = await phone.get(order["pay"]["pay_url"])
        assert page.status_code == 200, page.text
        tampered = await phone.get(order["pay"]["pay_url"].replace("20.00", "0.01"))
        assert tampered.status_code == 400
    assert world.alipay.trades[order["order_id"]].total_amount == "20.00"


async def test_an_answer_not_signed_by_the_platform_is_not_believed(world: World) -> None:
    # Billing configured with another platform key: the emulator's genuine answers look forged to it.
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = world.settings.model_copy(update={"wechat_platform_public_key": public_pem(impostor)})
    async with httpx.AsyncClient() as http:
        container = world.app.state.container
        online = OnlinePayments(
            container.runtime.engine, container.billing, Providers.from_settings(settings), settings, http
        )
        account = await new_account(world.client)
        with pytest.raises(ProviderUnavailable, match="valid platform signature"):
            await online.create_order("wechat", account, Decimal("5.00"), uuid.uuid4().hex)


async def test_the_sweeper_runs_on_one_replica_at_a_time(world: World) -> None:
    account = await new_account(world.client)
    await create(world.client, account, "2.00", "wechat")
    first, second = await asyncio.gather(world.online.sweep(datetime.now(UTC)), world.online.sweep(datetime.now(UTC)))
    assert (first is None) != (second is None), (first, second)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wechat_merchant_private_key", SecretStr("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----")),
        ("alipay_app_private_key", SecretStr("/nonexistent/secret/alipay_app_key.pem")),
        ("wechat_platform_public_key", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
    ],
)
def test_a_bad_key_fails_the_start(world: World, field: str, value: object) -> None:
    with pytest.raises(ValueError, match="payment provider settings"):
        Providers.from_settings(world.settings.model_copy(update={field: value}))


def test_a_key_is_read_from_a_mounted_secret_file(world: World, tmp_path: Any) -> None:
    path = tmp_path / "apiclient_key.pem"
    path.write_text(pem(MERCHANT_KEY))
    providers = Providers.from_settings(
        world.settings.model_copy(update={"wechat_merchant_private_key": SecretStr(str(path))})
    )
    assert providers.wechat_merchant is not None


async def paid_order(world: World, provider: str, amount: str) -> tuple[str, dict[str, Any]]:
    account = await new_account(world.client)
    order = await create(world.client, account, amount, provider)
    if provider == "wechat":
        headers, body = world.wechat.pay(order["order_id"])
        assert (await notify_wechat(world, headers, body)).json()["outcome"] == "accepted"
    else:
        form = world.alipay.pay(order["order_id"])
        assert (await world.client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)).is_success
    return account, await order_of(world, order["order_id"])


async def refund(world: World, payment_id: str, amount: str) -> dict[str, Any]:
    response = await world.client.post(
        f"/v1/payments/{payment_id}/refunds",
        json={"amount": amount, "reason": "退租退款"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_wechat_refund_goes_through_the_provider_and_its_notification_applies_once(world: World) -> None:
    account, order = await paid_order(world, "wechat", "50.00")
    done = await refund(world, order["payment_id"], "20.00")
    assert done["provider_status"] == "processing"
    at_provider = world.wechat.refunds[uuid.UUID(done["refund_id"]).hex]
    assert (at_provider.out_trade_no, at_provider.refund, at_provider.total) == (order["order_id"], 2000, 5000)
    assert await balance(world.client, account) == Decimal("30.00")  # the ledger posting as before
    headers, body = world.wechat.refund_notification(at_provider.out_refund_no)
    first = await notify_wechat(world, headers, body)
    assert (first.status_code, first.json()["outcome"]) == (200, "accepted")
    assert (await notify_wechat(world, headers, body)).json()["outcome"] == "replayed"
    refunds = (await world.client.get(f"/v1/payments/{order['payment_id']}/refunds")).json()
    assert [r["provider_status"] for r in refunds] == ["success"]
    assert await balance(world.client, account) == Decimal("30.00")


async def test_a_wechat_refund_the_provider_gives_up_on_is_held_for_review_not_credited(world: World) -> None:
    _, order = await paid_order(world, "wechat", "40.00")
    done = await refund(world, order["payment_id"], "40.00")
    headers, body = world.wechat.refund_notification(uuid.UUID(done["refund_id"]).hex, status="ABNORMAL")
    assert (await notify_wechat(world, headers, body)).json()["outcome"] == "accepted"
    reviews = (await world.client.get("/v1/payments/reviews")).json()
    item = next(r for r in reviews if r["detail"].get("refund_id") == done["refund_id"])
    assert (item["kind"], item["amount"]) == ("refund_failed", "40.00")
    assign = await world.client.post(f"/v1/payments/reviews/{item['review_id']}/assign", json={"account_id": "x"})
    assert (assign.status_code, assign.json()["code"]) == (409, "review_not_creditable")


async def test_alipay_refund_is_paid_back_at_once_or_held_for_review(world: World) -> None:
    account, order = await paid_order(world, "alipay", "25.00")
    done = await refund(world, order["payment_id"], "5.00")
    assert done["provider_status"] == "success"
    assert world.alipay.refunds[uuid.UUID(done["refund_id"]).hex] == (order["order_id"], "5.00")
    world.alipay.refuse_refunds = True
    try:
        refused = await refund(world, order["payment_id"], "6.00")
    finally:
        world.alipay.refuse_refunds = False
    assert refused["provider_status"] == "failed"
    assert await balance(world.client, account) == Decimal("14.00")
    reviews = (await world.client.get("/v1/payments/reviews")).json()
    assert any(r["kind"] == "refund_failed" and r["detail"].get("refund_id") == refused["refund_id"] for r in reviews)


async def test_a_forged_refund_notification_changes_nothing(world: World) -> None:
    _, order = await paid_order(world, "wechat", "10.00")
    done = await refund(world, order["payment_id"], "10.00")
    headers, body = world.wechat.refund_notification(uuid.UUID(done["refund_id"]).hex)
    headers["Wechatpay-Signature"] = headers["Wechatpay-Signature"][::-1]
    response = await notify_wechat(world, headers, body)
    assert (response.status_code, response.json()["code"]) == (400, "callback_bad_signature")
    refunds = (await world.client.get(f"/v1/payments/{order['payment_id']}/refunds")).json()
    assert [r["provider_status"] for r in refunds] == ["processing"]


def today_in_beijing() -> str:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()


async def test_reconciliation_finds_a_missing_an_extra_and_a_mismatched_line(world: World) -> None:
    account, paid = await paid_order(world, "wechat", "50.00")
    _, mismatched = await paid_order(world, "wechat", "20.00")
    _, dropped = await paid_order(world, "wechat", "7.00")
    done = await refund(world, paid["payment_id"], "15.00")
    headers, body = world.wechat.refund_notification(uuid.UUID(done["refund_id"]).hex)
    assert (await notify_wechat(world, headers, body)).json()["outcome"] == "accepted"
    txn, order_no, settled = (WECHAT_BILL.index(name) for name in ("微信订单号", "商户订单号", "应结订单金额"))

    def edit(rows: list[list[str]]) -> list[list[str]]:
        kept = [row for row in rows if row[txn] != dropped["provider_txn_id"]]  # booked, not settled
        for row in kept:
            if row[txn] == mismatched["provider_txn_id"]:
                row[settled] = "2.00"  # settled 2.00 for a 20.00 payment
        ghost = next(row for row in rows if row[txn] == paid["provider_txn_id"]).copy()
        ghost[txn], ghost[order_no] = "4200000000000000000000GHOST", "SDGHOST"  # settled, never booked
        return [*kept, ghost]

    world.wechat.bill_edit = edit
    try:
        response = await world.client.post(f"/v1/payments/reconciliations/wechat/{today_in_beijing()}")
        assert response.status_code == 200, response.text
        again = await world.client.post(f"/v1/payments/reconciliations/wechat/{today_in_beijing()}")
    finally:
        world.wechat.bill_edit = None
    report = response.json()
    mine = {
        (d["problem"], d["line"], d["key"], d["settled"], d["booked"])
        for d in report["differences"]
        if d["order_id"] in (paid["order_id"], mismatched["order_id"], dropped["order_id"], "SDGHOST")
    }
    assert mine == {
        ("missing", "payment", "4200000000000000000000GHOST", "50.00", None),
        ("amount", "payment", mismatched["provider_txn_id"], "2.00", "20.00"),
        ("extra", "payment", dropped["provider_txn_id"], None, "7.00"),
    }
    assert report["balanced"] is False
    assert Decimal(report["settled_refunds"]) >= Decimal("15.00")
    assert again.json()["differences"] == report["differences"]
    # Each difference is one review item, however often the day is reconciled.
    reviews = (await world.client.get("/v1/payments/reviews", params={"limit": 1000})).json()
    ours = [
        r
        for r in reviews
        if r["kind"].startswith("reconciliation_")
        and r["detail"]["order_id"] in (mismatched["order_id"], dropped["order_id"], "SDGHOST")
    ]
    assert sorted(r["kind"] for r in ours) == [
        "reconciliation_amount",
        "reconciliation_extra",
        "reconciliation_missing",
    ]
    # Money the provider settled and the ledger never booked is credited from the review, once.
    ghost = next(r for r in ours if r["kind"] == "reconciliation_missing")
    assigned = await world.client.post(
        f"/v1/payments/reviews/{ghost['review_id']}/assign", json={"account_id": account}
    )
    assert assigned.status_code == 200, assigned.text
    assert await balance(world.client, account) == Decimal("85.00")  # 50 − 15 refunded + 50 found
    extra = next(r for r in ours if r["kind"] == "reconciliation_extra")
    refused = await world.client.post(f"/v1/payments/reviews/{extra['review_id']}/assign", json={"account_id": account})
    assert refused.status_code == 409
    listed = (await world.client.get("/v1/payments/reconciliations", params={"bill_date": today_in_beijing()})).json()
    assert [r["provider"] for r in listed] == ["wechat"]


async def test_alipay_reconciliation_reads_the_zipped_gbk_bill(world: World) -> None:
    _, paid = await paid_order(world, "alipay", "33.30")
    done = await refund(world, paid["payment_id"], "3.30")
    assert done["provider_status"] == "success"
    report = (await world.client.post(f"/v1/payments/reconciliations/alipay/{today_in_beijing()}")).json()
    keys = {(d["problem"], d["order_id"]) for d in report["differences"]}
    assert not [k for k in keys if k[1] == paid["order_id"]], report
    assert Decimal(report["settled_payments"]) >= Decimal("33.30")
    assert Decimal(report["settled_refunds"]) >= Decimal("3.30")
    amount = ALIPAY_BILL.index("订单金额（元）")
    world.alipay.bill_edit = lambda rows: [
        [*row[:amount], "30.00", *row[amount + 1 :]] if row[1] == paid["order_id"] and row[2] == "交易" else row
        for row in rows
    ]
    try:
        changed = (await world.client.post(f"/v1/payments/reconciliations/alipay/{today_in_beijing()}")).json()
    finally:
        world.alipay.bill_edit = None
    assert [
        (d["problem"], d["settled"], d["booked"]) for d in changed["differences"] if d["order_id"] == paid["order_id"]
    ] == [("amount", "30.00", "33.30")]


async def test_the_sandbox_is_wechat_pay_in_process_through_the_same_client(world: World) -> None:
    account = await new_account(world.client)
    order = await create(world.client, account, "12.34", "sandbox")
    assert order["pay"]["code_url"].startswith("weixin://wxpay/bizpayurl")  # opened at the sandbox platform
    sandbox = world.online.sandbox_emulator
    assert sandbox is not None
    assert ("POST", "/v3/pay/transactions/native") in sandbox.requests  # our signed request, verified there
    paid = await world.client.post(f"/v1/payments/sandbox/orders/{order['order_id']}/pay")
    assert paid.json()["outcome"] == "accepted", paid.text
    # A payment made at the sandbox whose notification never came: the sweeper's query credits it.
    lost = await create(world.client, account, "1.00", "sandbox")
    sandbox.pay(lost["order_id"])
    await world.online.sweep(datetime.now(UTC))
    assert (await order_of(world, lost["order_id"]))["status"] == "paid"
    assert await balance(world.client, account) == Decimal("13.34")
    done = await refund(world, paid.json()["payment"]["payment_id"], "2.34")
    assert done["provider_status"] == "processing"
    assert uuid.UUID(done["refund_id"]).hex in sandbox.refunds


async def test_a_refund_whose_notification_is_lost_is_settled_by_the_sweepers_query(world: World) -> None:
    _, order = await paid_order(world, "wechat", "18.00")
    done = await refund(world, order["payment_id"], "8.00")
    world.wechat.refund_notification(uuid.UUID(done["refund_id"]).hex)  # settled at WeChat; notification lost
    await world.online.sweep(datetime.now(UTC))
    refunds = (await world.client.get(f"/v1/payments/{order['payment_id']}/refunds")).json()
    assert [r["provider_status"] for r in refunds] == ["success"]
