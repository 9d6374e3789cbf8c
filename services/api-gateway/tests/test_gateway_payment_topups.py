"""A tenant's online top-up through the gateway, against the real billing service and the WeChat Pay and
Alipay emulators on their own ports: the tenant chooses the method, the gateway forwards the openid (JSAPI)
and the payer's address as it sees it (H5, believing X-Forwarded-For only from a trusted proxy), and the
answer carries the provider's pay parameters. The provider's signed notification, sent to the gateway,
credits the balance once."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.providers.alipay import AlipayEmulator
from shuidian_devstack.providers.wechat import WechatPayEmulator
from shuidian_gateway.testing import Harness, free_port, gateway_harness, serve

pytestmark = pytest.mark.integration

ACCOUNT = "ACC-TOPUP-A"
MERCHANT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALIPAY_APP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MCH_ID, APP_ID, MERCHANT_SERIAL = "1900000109", "wx8888888888888888", "3775B6A45ACD588826D15E583A95F5DD28F4A1C3"
ALIPAY_APP = "2021000000000001"
PAYER = "198.51.100.23"  # the phone, as the operator's reverse proxy (127.0.0.1 here) reports it


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass(frozen=True)
class Stack:
    gateway: Harness
    wechat: WechatPayEmulator
    alipay: AlipayEmulator


async def _ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(pg_server_url: str, database_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    name = f"shuidian_gw_topups_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    wechat = WechatPayEmulator(APP_ID, MCH_ID, MERCHANT_KEY.public_key(), MERCHANT_SERIAL)
    alipay = AlipayEmulator(ALIPAY_APP, ALIPAY_APP_KEY.public_key())
    port, wport, aport = free_port(), free_port(), free_port()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(url),
        mqtt_url=mqtt_url,
        instance_id=f"billing-gw-topups-{port}",
        mqtt_clean_session=True,
        http_port=port,
        wechat_app_id=APP_ID,
        wechat_mch_id=MCH_ID,
        wechat_apiv3_key=SecretStr(wechat.apiv3_key),
        wechat_platform_public_key=_public(wechat.platform_key),
        wechat_platform_serial=wechat.platform_serial,
        wechat_merchant_private_key=SecretStr(_pem(MERCHANT_KEY)),
        wechat_merchant_serial=MERCHANT_SERIAL,
        wechat_api_base=f"http://127.0.0.1:{wport}",
        wechat_notify_url="https://gateway.example/v1/payments/notify/wechat",
        alipay_app_id=ALIPAY_APP,
        alipay_seller_id=alipay.seller_id,
        alipay_public_key=_public(alipay.alipay_key),
        alipay_app_private_key=SecretStr(_pem(ALIPAY_APP_KEY)),
        alipay_gateway_url=f"http://127.0.0.1:{aport}/gateway.do",
        alipay_notify_url="https://gateway.example/v1/payments/notify/alipay",
        order_sweep_seconds=0,
    )
    try:
        async with (
            infra.serve_app(wechat.app(), wport),
            infra.serve_app(alipay.app(), aport),
            serve(billing_app(settings), port),
            gateway_harness(
                database_url, mqtt_url, billing_url=f"http://127.0.0.1:{port}", trusted_proxies="127.0.0.1/32"
            ) as h,
        ):
            async with h.client("admin") as admin:
                await _ok(admin, "PUT", "/v1/estates/EP", json={"name": "小区EP"})
                await _ok(admin, "PUT", "/v1/buildings/EP-B", json={"estate_id": "EP", "name": "1栋"})
                await _ok(admin, "PUT", "/v1/floors/EP-F", json={"building_id": "EP-B", "level": 1})
                await _ok(admin, "PUT", "/v1/rooms/EP-R", json={"floor_id": "EP-F", "code": "EP-101", "area_m2": "50"})
                await _ok(admin, "PUT", "/v1/tenants/T-A", json={"name": "住户A"})
                lease = {"tenant_id": "T-A", "room_id": "EP-R", "move_in": "2018-01-01", "account_id": ACCOUNT}
                await _ok(admin, "PUT", "/v1/leases/L-TOPUP-A", json=lease)
            yield Stack(h, wechat, alipay)
    finally:
        await infra.drop_database(pg_server_url, name)


async def _balance(h: Harness) -> Decimal:
    async with h.client("admin") as admin:
        return Decimal((await _ok(admin, "GET", f"/v1/accounts/{ACCOUNT}"))["balance"])


async def _top_up(h: Harness, body: dict[str, Any], key: str | None = None, **kwargs: Any) -> httpx.Response:
    async with h.client("tenant_a") as tenant:
        return await tenant.post(
            f"/v1/me/accounts/{ACCOUNT}/topups",
            json=body,
            headers={"Idempotency-Key": key or uuid.uuid4().hex, **kwargs.pop("headers", {})},
        )


async def test_the_tenant_sees_the_configured_providers_and_their_methods(stack: Stack) -> None:
    async with stack.gateway.client("tenant_a") as tenant:
        methods = await _ok(tenant, "GET", f"/v1/me/accounts/{ACCOUNT}/payment-methods")
        other = await tenant.get("/v1/me/accounts/ACC-NOT-MINE/payment-methods")
    assert methods == [
        {"provider": "wechat", "methods": ["native", "jsapi", "h5"]},
        {"provider": "alipay", "methods": ["precreate", "wap"]},
        {"provider": "sandbox", "methods": ["native"]},
    ]
    assert other.status_code == 404


async def test_a_native_order_is_scanned_paid_notified_through_the_gateway_and_credited_once(stack: Stack) -> None:
    h = stack.gateway
    before = await _balance(h)
    key = uuid.uuid4().hex
    created = await _top_up(h, {"amount": "66.60", "provider": "wechat", "method": "native"}, key)
    again = await _top_up(h, {"amount": "66.60", "provider": "wechat", "method": "native"}, key)
    assert created.status_code == 201, created.text
    order = created.json()
    assert again.json() == order  # the same order, not a second one
    assert (order["method"], order["status"]) == ("native", "open")
    assert order["pay"]["code_url"].startswith("weixin://wxpay/bizpayurl")
    assert stack.wechat.orders[order["order_id"]].total == 6660
    headers, body = stack.wechat.pay(order["order_id"])  # the payer scans and pays
    async with httpx.AsyncClient(base_url=h.url) as provider:
        first = await provider.post("/v1/payments/notify/wechat", content=body, headers=headers)
        replay = await provider.post("/v1/payments/notify/wechat", content=body, headers=headers)
    assert (first.status_code, replay.status_code) == (200, 200)
    async with h.client("tenant_a") as tenant:
        paid = await _ok(tenant, "GET", f"/v1/me/payments/{order['order_id']}")
    assert paid["status"] == "paid"
    assert paid["payment_id"] is not None
    assert await _balance(h) == before + Decimal("66.60")


async def test_jsapi_forwards_the_openid_and_returns_a_pay_sign_the_merchant_key_verifies(stack: Stack) -> None:
    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    created = await _top_up(
        stack.gateway, {"amount": "9.90", "provider": "wechat", "method": "jsapi", "openid": openid}
    )
    assert created.status_code == 201, created.text
    order = created.json()
    pay = order["pay"]
    assert set(pay) >= {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert pay["appId"] == APP_ID
    assert pay["package"].startswith("prepay_id=wx")
    message = f"{pay['appId']}\n{pay['timeStamp']}\n{pay['nonceStr']}\n{pay['package']}\n".encode()
    MERCHANT_KEY.public_key().verify(base64.b64decode(pay["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())
    assert stack.wechat.orders[order["order_id"]].payer == {"openid": openid}
    missing = await _top_up(stack.gateway, {"amount": "9.90", "provider": "wechat", "method": "jsapi"})
    assert (missing.status_code, missing.json()["code"]) == (422, "openid_required")


@pytest.mark.parametrize(
    ("peer", "forwarded", "seen"),
    [
        ("127.0.0.1", PAYER, PAYER),  # the trusted proxy's word
        ("127.0.0.1", f"203.0.113.66, {PAYER}", PAYER),  # the hop the proxy saw, not what the phone claimed
        ("203.0.113.9", PAYER, "203.0.113.9"),  # anyone else's X-Forwarded-For is ignored
    ],
)
async def test_h5_carries_the_payers_address_as_the_gateway_sees_it(
    stack: Stack, peer: str, forwarded: str, seen: str
) -> None:
    # In-process, so the peer is exactly `peer` (the gateway's server runs without uvicorn's proxy headers).
    h = stack.gateway
    transport = httpx.ASGITransport(app=h.app, client=(peer, 40000))
    headers = {"Authorization": f"Bearer {h.tokens['tenant_a']['access_token']}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as tenant:
        created = await tenant.post(
            f"/v1/me/accounts/{ACCOUNT}/topups",
            json={"amount": "5.00", "provider": "wechat", "method": "h5"},
            headers={"Idempotency-Key": uuid.uuid4().hex, "X-Forwarded-For": forwarded},
        )
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["pay"]["h5_url"].startswith("https://wx.tenpay.com/")
    assert stack.wechat.orders[order["order_id"]].payer == {"client_ip": seen}


async def test_alipay_wap_gives_a_signed_page_to_open_and_precreate_a_qr_code(stack: Stack) -> None:
    wap = await _top_up(stack.gateway, {"amount": "20.00", "provider": "alipay", "method": "wap"})
    precreate = await _top_up(stack.gateway, {"amount": "20.00", "provider": "alipay"})
    assert (wap.status_code, precreate.status_code) == (201, 201), wap.text + precreate.text
    url = urlsplit(wap.json()["pay"]["pay_url"])
    params = dict(parse_qsl(url.query))
    assert (params["method"], params["app_id"], params["sign_type"]) == ("alipay.trade.wap.pay", ALIPAY_APP, "RSA2")
    assert precreate.json()["method"] == "precreate"
    assert precreate.json()["pay"]["qr_code"]


async def test_a_method_the_provider_does_not_offer_is_refused(stack: Stack) -> None:
    wrong = await _top_up(stack.gateway, {"amount": "1.00", "provider": "alipay", "method": "jsapi"})
    bad_openid = await _top_up(
        stack.gateway, {"amount": "1.00", "provider": "wechat", "method": "jsapi", "openid": "o<script>"}
    )
    assert (wrong.status_code, wrong.json()["code"]) == (422, "unsupported_method")
    assert bad_openid.status_code == 422
