"""Provider notifications over real HTTP against the billing app on real PostgreSQL: WeChat Pay v3
and Alipay callbacks signed here, independently of the service's own signing code, with fresh
RSA keys — valid, forged, tampered, replayed, wrong amount, stale — and the sandbox provider."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.billing_harness import client_of

pytestmark = pytest.mark.integration

WECHAT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALIPAY_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
APIV3_KEY = secrets.token_hex(16)  # 32 characters, as WeChat issues it
MCH_ID, WECHAT_APP, SERIAL = "1900000109", "wx8888888888888888", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
ALIPAY_APP, SELLER = "2021000000000001", "2088000000000001"


def platform_certificate(key: rsa.RSAPrivateKey) -> str:
    """A self-signed certificate standing in for the WeChat Pay platform certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(SERIAL, 16))
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def wechat_body(order_id: str, txn_id: str, fen: int, *, mchid: str = MCH_ID, apiv3: str = APIV3_KEY) -> bytes:
    payment = {
        "appid": WECHAT_APP,
        "mchid": mchid,
        "out_trade_no": order_id,
        "transaction_id": txn_id,
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "success_time": "2026-11-25T10:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": fen, "payer_total": fen, "currency": "CNY", "payer_currency": "CNY"},
    }
    nonce = secrets.token_hex(6)
    ciphertext = AESGCM(apiv3.encode()).encrypt(nonce.encode(), json.dumps(payment).encode(), b"transaction")
    envelope = {
        "id": str(uuid.uuid4()),
        "create_time": "2026-11-25T10:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": "transaction",
            "nonce": nonce,
        },
    }
    return json.dumps(envelope, ensure_ascii=False).encode()


def wechat_headers(body: bytes, *, key: rsa.RSAPrivateKey = WECHAT_KEY, at: datetime | None = None) -> dict[str, str]:
    timestamp = str(int((at or datetime.now(UTC)).timestamp()))
    nonce = secrets.token_hex(16)
    return {
        "Content-Type": "application/json",
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Serial": SERIAL,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Wechatpay-Signature": sign(key, f"{timestamp}\n{nonce}\n".encode() + body + b"\n"),
    }


def alipay_form(
    order_id: str,
    trade_no: str,
    yuan: str,
    *,
    status: str = "TRADE_SUCCESS",
    key: rsa.RSAPrivateKey = ALIPAY_KEY,
    at: datetime | None = None,
) -> dict[str, str]:
    sent = (at or datetime.now(UTC)).astimezone(ZoneInfo("Asia/Shanghai"))
    params = {
        "notify_time": sent.strftime("%Y-%m-%d %H:%M:%S"),
        "notify_type": "trade_status_sync",
        "notify_id": secrets.token_hex(16),
        "charset": "utf-8",
        "version": "1.0",
        "app_id": ALIPAY_APP,
        "seller_id": SELLER,
        "trade_no": trade_no,
        "out_trade_no": order_id,
        "trade_status": status,
        "total_amount": yuan,
        "receipt_amount": yuan,
        "subject": "水电费充值",
        "gmt_payment": sent.strftime("%Y-%m-%d %H:%M:%S"),
        "fund_bill_list": f'[{{"amount":"{yuan}","fundChannel":"ALIPAYACCOUNT"}}]',
    }
    content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v)
    return {**params, "sign_type": "RSA2", "sign": sign(key, content.encode())}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    alipay_public = ALIPAY_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"pay-{uuid.uuid4().hex[:6]}",
        wechat_app_id=WECHAT_APP,
        wechat_mch_id=MCH_ID,
        wechat_apiv3_key=SecretStr(APIV3_KEY),
        wechat_platform_public_key=platform_certificate(WECHAT_KEY),
        wechat_platform_serial=SERIAL,
        alipay_app_id=ALIPAY_APP,
        alipay_seller_id=SELLER,
        alipay_public_key=base64.b64encode(alipay_public).decode(),  # the bare form Alipay's console shows
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        client_of(app) as client,
    ):
        yield client


async def new_account(client: httpx.AsyncClient) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    assert (await client.put(f"/v1/accounts/{account}", json={"name": "测试住户"})).status_code == 204
    return account


async def balance(client: httpx.AsyncClient, account: str) -> Decimal:
    return Decimal((await client.get(f"/v1/accounts/{account}")).json()["balance"])


async def order(client: httpx.AsyncClient, provider: str, account: str, amount: str) -> str:
    response = await client.post(
        "/v1/payments/orders",
        json={"provider": provider, "account_id": account, "amount": amount},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    order_id: str = response.json()["order_id"]
    return order_id


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


async def logged(client: httpx.AsyncClient, order_id: str) -> list[str]:
    rows = (await client.get("/v1/payments/callbacks", params={"limit": 1000})).json()
    return [row["outcome"] for row in rows if row["order_id"] == order_id]


async def test_wechat_valid_callback_credits_once_and_a_replay_returns_the_original(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "wechat", account, "50.00")
    body = wechat_body(order_id, "4200000001202611250000000001", 5000)
    first = await client.post("/v1/payments/notify/wechat", content=body, headers=wechat_headers(body))
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "accepted"
    # WeChat redelivers the same notification, signed again with a new timestamp and nonce.
    again = await client.post("/v1/payments/notify/wechat", content=body, headers=wechat_headers(body))
    assert again.status_code == 200
    assert again.json()["outcome"] == "replayed"
    assert again.json()["payment"]["payment_id"] == first.json()["payment"]["payment_id"]
    assert await balance(client, account) == Decimal("50.00")
    paid = (await client.get(f"/v1/payments/orders/{order_id}")).json()
    assert (paid["status"], paid["provider_txn_id"]) == ("paid", "4200000001202611250000000001")
    assert await logged(client, order_id) == ["replayed", "accepted"]


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        ("forged_signature", "callback_bad_signature"),
        ("tampered_body", "callback_bad_signature"),
        ("wrong_apiv3_key", "callback_bad_signature"),
        ("stale_timestamp", "callback_stale"),
        ("future_timestamp", "callback_stale"),
        ("other_merchant", "callback_wrong_merchant"),
        ("unknown_serial", "callback_bad_signature"),
        ("missing_signature", "callback_malformed"),
        ("oversized_body", "callback_malformed"),
        ("unknown_order", "callback_unknown_order"),
    ],
)
async def test_wechat_hostile_callbacks_are_rejected_logged_and_credit_nothing(
    client: httpx.AsyncClient, attack: str, code: str
) -> None:
    account = await new_account(client)
    order_id = await order(client, "wechat", account, "30.00")
    txn = f"42000000012026112{secrets.randbelow(10**10):010d}"
    body = wechat_body(order_id, txn, 3000)
    headers = wechat_headers(body)
    if attack == "forged_signature":
        headers = wechat_headers(body, key=ATTACKER_KEY)
    elif attack == "tampered_body":
        body = body.replace(b'"summary": "', b'"summary": "x')
    elif attack == "wrong_apiv3_key":
        body = wechat_body(order_id, txn, 3000, apiv3=secrets.token_hex(16))
        headers = wechat_headers(body)
    elif attack == "stale_timestamp":
        headers = wechat_headers(body, at=datetime.now(UTC) - timedelta(minutes=6))
    elif attack == "future_timestamp":
        headers = wechat_headers(body, at=datetime.now(UTC) + timedelta(minutes=6))
    elif attack == "other_merchant":
        body = wechat_body(order_id, txn, 3000, mchid="1900000999")
        headers = wechat_headers(body)
    elif attack == "unknown_serial":
        headers["Wechatpay-Serial"] = "0123456789ABCDEF"
    elif attack == "missing_signature":
        del headers["Wechatpay-Signature"]
    elif attack == "unknown_order":
        body = wechat_body(f"SD{uuid.uuid4().hex[:20]}", txn, 3000)
        headers = wechat_headers(body)
    elif attack == "oversized_body":
        body = body + b" " * 70_000
        headers = wechat_headers(body)
    response = await client.post("/v1/payments/notify/wechat", content=body, headers=headers)
    problem(response, 400, code)
    assert await balance(client, account) == Decimal("0.00")
    assert (await client.get(f"/v1/payments/orders/{order_id}")).json()["status"] == "open"
    rejected = (await client.get("/v1/payments/callbacks", params={"outcome": "rejected"})).json()
    assert any(code in row["reason"] for row in rejected)


async def test_wechat_amount_mismatch_is_refused_and_held_for_review(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "wechat", account, "100.00")
    body = wechat_body(order_id, "4200000001202611259999999999", 1000)  # 10.00 paid for a 100.00 order
    response = await client.post("/v1/payments/notify/wechat", content=body, headers=wechat_headers(body))
    problem(response, 409, "amount_mismatch")
    assert await balance(client, account) == Decimal("0.00")
    reviews = (await client.get("/v1/payments/reviews")).json()
    item = next(r for r in reviews if r["subject"] == "wechat:4200000001202611259999999999")
    assert (item["kind"], item["amount"], item["account_id"]) == ("callback_amount_mismatch", "10.00", account)
    assert await logged(client, order_id) == ["amount_mismatch"]
    # Staff credit what was really paid; the provider's retry afterwards still credits nothing more.
    assigned = await client.post(
        f"/v1/payments/reviews/{item['review_id']}/assign", json={"account_id": account, "operator": "财务-王"}
    )
    assert assigned.status_code == 200, assigned.text
    assert await balance(client, account) == Decimal("10.00")


async def test_alipay_valid_callback_credits_once_and_replays_are_harmless(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "alipay", account, "88.80")
    form = alipay_form(order_id, "2026112522001400000000000001", "88.80")
    first = await client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)
    assert (first.status_code, first.text) == (200, "success")
    again = await client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)
    assert (again.status_code, again.text) == (200, "success")
    assert again.headers["X-Payment-Outcome"] == "replayed"
    assert again.headers["X-Payment-Id"] == first.headers["X-Payment-Id"]
    assert await balance(client, account) == Decimal("88.80")


FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


@pytest.mark.parametrize(
    ("attack", "status", "code"),
    [
        ("forged_signature", 400, "callback_bad_signature"),
        ("tampered_amount", 400, "callback_bad_signature"),
        ("tampered_order", 400, "callback_bad_signature"),
        ("stale_notify_time", 400, "callback_stale"),
        ("amount_mismatch", 409, "amount_mismatch"),
        ("other_app", 400, "callback_wrong_merchant"),
        ("rsa1", 400, "callback_malformed"),
        ("duplicate_parameter", 400, "callback_malformed"),
    ],
)
async def test_alipay_hostile_callbacks_are_refused_and_credit_nothing(
    client: httpx.AsyncClient, attack: str, status: int, code: str
) -> None:
    account = await new_account(client)
    order_id = await order(client, "alipay", account, "20.00")
    trade_no = f"2026112522001{secrets.randbelow(10**15):015d}"
    form = alipay_form(order_id, trade_no, "20.00")
    body = urlencode(form)
    if attack == "forged_signature":
        body = urlencode(alipay_form(order_id, trade_no, "20.00", key=ATTACKER_KEY))
    elif attack == "tampered_amount":
        body = urlencode({**form, "total_amount": "2000.00"})
    elif attack == "tampered_order":
        other = await order(client, "alipay", account, "20.00")
        body = urlencode({**form, "out_trade_no": other})
    elif attack == "stale_notify_time":
        body = urlencode(alipay_form(order_id, trade_no, "20.00", at=datetime.now(UTC) - timedelta(days=3)))
    elif attack == "amount_mismatch":
        body = urlencode(alipay_form(order_id, trade_no, "0.20"))  # yuan, not fen
    elif attack == "other_app":
        signed = alipay_form(order_id, trade_no, "20.00")
        params = {k: v for k, v in signed.items() if k not in ("sign", "sign_type")} | {"app_id": "2021999999999999"}
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v)
        body = urlencode({**params, "sign_type": "RSA2", "sign": sign(ALIPAY_KEY, content.encode())})
    elif attack == "rsa1":
        body = urlencode({**form, "sign_type": "RSA"})
    elif attack == "duplicate_parameter":
        body = urlencode(form) + "&total_amount=20.00"
    response = await client.post("/v1/payments/notify/alipay", content=body, headers=FORM)
    problem(response, status, code)
    assert await balance(client, account) == Decimal("0.00")
    if attack == "amount_mismatch":
        assert await logged(client, order_id) == ["amount_mismatch"]
    else:
        rejected = (await client.get("/v1/payments/callbacks", params={"outcome": "rejected", "limit": 1})).json()
        assert code in rejected[0]["reason"]


async def test_alipay_unpaid_status_is_acknowledged_without_credit(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "alipay", account, "5.00")
    form = alipay_form(order_id, "2026112522001499999999999999", "5.00", status="WAIT_BUYER_PAY")
    response = await client.post("/v1/payments/notify/alipay", content=urlencode(form), headers=FORM)
    assert (response.status_code, response.text, response.headers["X-Payment-Outcome"]) == (200, "success", "ignored")
    assert await balance(client, account) == Decimal("0.00")


async def test_sandbox_provider_pays_through_the_same_verification(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "sandbox", account, "12.34")
    first = await client.post(f"/v1/payments/sandbox/orders/{order_id}/pay")
    assert first.status_code == 200, first.text
    again = await client.post(f"/v1/payments/sandbox/orders/{order_id}/pay")
    assert [first.json()["outcome"], again.json()["outcome"]] == ["accepted", "replayed"]
    assert await balance(client, account) == Decimal("12.34")
    # A sandbox notification signed by anyone else is as forged as any other.
    body = wechat_body(order_id, "SBX-forged", 1234)
    problem(
        await client.post("/v1/payments/notify/sandbox", content=body, headers=wechat_headers(body)),
        400,
        "callback_bad_signature",
    )


async def test_order_replay_and_conflicting_replay(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    key = uuid.uuid4().hex
    body = {"provider": "wechat", "account_id": account, "amount": "9.00"}
    first = await client.post("/v1/payments/orders", json=body, headers={"Idempotency-Key": key})
    again = await client.post("/v1/payments/orders", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["order_id"] == again.json()["order_id"]
    conflict = await client.post(
        "/v1/payments/orders", json={**body, "amount": "9.01"}, headers={"Idempotency-Key": key}
    )
    problem(conflict, 409, "idempotency_conflict")
    problem(
        await client.post("/v1/payments/orders", json={**body, "amount": 9.0}, headers={"Idempotency-Key": "k" * 9}),
        422,
        "validation_error",
    )


async def test_concurrent_deliveries_of_one_notification_credit_once(client: httpx.AsyncClient) -> None:
    account = await new_account(client)
    order_id = await order(client, "wechat", account, "66.00")
    body = wechat_body(order_id, "4200000001202611257777777777", 6600)
    responses = await asyncio.gather(
        *(client.post("/v1/payments/notify/wechat", content=body, headers=wechat_headers(body)) for _ in range(6))
    )
    assert [r.status_code for r in responses] == [200] * 6
    assert sorted(r.json()["outcome"] for r in responses) == ["accepted"] + ["replayed"] * 5
    assert len({r.json()["payment"]["payment_id"] for r in responses}) == 1
    assert await balance(client, account) == Decimal("66.00")
