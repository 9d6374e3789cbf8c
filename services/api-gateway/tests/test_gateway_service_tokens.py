"""The gateway signs every call to a backend for the principal it serves, and money reaches billing only
through it: a tenant's sandbox payment goes down the provider's signed-callback path, a provider's
notification is forwarded as it came, and billing itself refuses whoever calls it without a token."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_billing.adapters.payments.sandbox import Sandbox
from shuidian_billing.adapters.payments.signing import new_private_key
from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_gateway.adapters.upstream import Upstreams, act_as
from shuidian_gateway.domain.policy import Principal, Role
from shuidian_gateway.testing import Harness, free_port, gateway_harness, serve
from shuidian_kit.service_auth import ActingPrincipal, ServiceTokens, require_service_tokens
from shuidian_shared.settings import ServiceSettings

ACCOUNT = "ACC-TOKENS-A"


# --- what the gateway sends ----------------------------------------------------------------------


def recording_backend() -> tuple[FastAPI, list[tuple[str, str, str | None, tuple[str, ...] | None]]]:
    app = FastAPI()
    require_service_tokens(app, ServiceSettings(environment="test"), "billing")
    seen: list[tuple[str, str, str | None, tuple[str, ...] | None]] = []

    @app.get("/v1/echo")
    async def echo(principal: ActingPrincipal) -> dict[str, str]:
        seen.append((principal.issuer, principal.subject, principal.role, principal.estates))
        return {"ok": "yes"}

    return app, seen


async def test_upstream_calls_are_signed_for_the_requests_principal_or_the_gateway_itself() -> None:
    app, seen = recording_backend()
    tokens = ServiceTokens.from_settings(ServiceSettings(environment="test"), "gateway")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        upstreams = Upstreams(client, {"billing": "http://billing"}, tokens)

        async def as_cashier() -> None:
            act_as(Principal("user", "u-7", Role.CASHIER, frozenset({"E1"})))
            # A header the caller passes on cannot stand in for the gateway's credential.
            await upstreams.call("billing", "GET", "/v1/echo", headers={"authorization": "Bearer forged"})

        async def as_admin_key() -> None:
            act_as(Principal("api_key", "k1", Role.INTEGRATOR, frozenset({"*"})))
            await upstreams.call("billing", "GET", "/v1/echo")

        await asyncio.gather(as_cashier(), as_admin_key())  # each request its own context
        await upstreams.call("billing", "GET", "/v1/echo")  # no request: the gateway's own work
    assert sorted(seen, key=lambda s: s[1]) == [
        ("gateway", "api_key:k1", "integrator", None),  # "*": every estate, so no list
        ("gateway", "service:gateway", None, None),
        ("gateway", "user:u-7", "cashier", ("E1",)),
    ]


# --- money through the gateway against the real billing ---------------------------------------


async def _ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path} → {response.status_code} {response.text}"
    return response.json() if response.content else None


@dataclass(frozen=True)
class Stack:
    gateway: Harness
    billing_url: str
    sandbox: Sandbox  # the provider's keys, shared with billing


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(pg_server_url: str, database_url: str, mqtt_url: str) -> AsyncIterator[Stack]:
    name = f"shuidian_gw_tokens_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    port = free_port()
    pem = new_private_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    settings = BillingSettings(
        environment="test",
        database_url=SecretStr(url),
        mqtt_url=mqtt_url,
        instance_id=f"billing-gw-tokens-{port}",
        mqtt_clean_session=True,
        http_port=port,
        sandbox_private_key=SecretStr(pem),
        sandbox_apiv3_key=SecretStr(uuid.uuid4().hex),
    )
    billing = f"http://127.0.0.1:{port}"
    try:
        async with (
            serve(billing_app(settings), port),
            gateway_harness(database_url, mqtt_url, billing_url=billing) as h,
        ):
            async with h.client("admin") as admin:
                await _ok(admin, "PUT", "/v1/estates/ET", json={"name": "小区ET"})
                await _ok(admin, "PUT", "/v1/buildings/ET-B", json={"estate_id": "ET", "name": "1栋"})
                await _ok(admin, "PUT", "/v1/floors/ET-F", json={"building_id": "ET-B", "level": 1})
                await _ok(admin, "PUT", "/v1/rooms/ET-R", json={"floor_id": "ET-F", "code": "ET-101", "area_m2": "50"})
                await _ok(admin, "PUT", "/v1/tenants/T-A", json={"name": "住户A"})
                lease = {"tenant_id": "T-A", "room_id": "ET-R", "move_in": "2018-01-01", "account_id": ACCOUNT}
                await _ok(admin, "PUT", "/v1/leases/L-TOKENS-A", json=lease)
            yield Stack(h, billing, Sandbox.from_settings(settings))
    finally:
        await infra.drop_database(pg_server_url, name)


async def balance(h: Harness) -> Decimal:
    async with h.client("admin") as admin:
        return Decimal((await _ok(admin, "GET", f"/v1/accounts/{ACCOUNT}"))["balance"])


async def test_a_tenant_pays_through_the_gateway_and_billing_answers_nobody_else(gw: Stack) -> None:
    h, billing = gw.gateway, gw.billing_url
    before = await balance(h)
    async with h.client("tenant_a") as tenant:
        order = await _ok(
            tenant,
            "POST",
            f"/v1/me/accounts/{ACCOUNT}/topups",
            json={"amount": "77.00", "provider": "sandbox"},
            headers={"Idempotency-Key": f"tokens-{uuid.uuid4().hex}"},
        )
    order_id = order["order_id"]

    # Straight to billing, as anyone who reaches its port: refused, nothing credited.
    async with httpx.AsyncClient(base_url=billing) as outsider:
        for case, headers in infra.refused_credentials("billing").items():
            paid = await outsider.post(f"/v1/payments/sandbox/orders/{order_id}/pay", headers=headers)
            assert paid.status_code == 401, case
            topped = await outsider.post(
                f"/v1/accounts/{ACCOUNT}/topups",
                json={"amount": "77.00"},
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert topped.status_code == 401, case
    # Another tenant cannot have the sandbox pay this order.
    async with h.client("tenant_b") as other:
        assert (await other.post(f"/v1/me/payments/{order_id}/sandbox-pay")).status_code == 404
    assert await balance(h) == before

    # The tenant can: the sandbox signs its notification and billing verifies it like any provider's.
    async with h.client("tenant_a") as tenant:
        paid = await _ok(tenant, "POST", f"/v1/me/payments/{order_id}/sandbox-pay")
        assert paid["outcome"] == "accepted", paid
        assert (await _ok(tenant, "GET", f"/v1/me/payments/{order_id}"))["status"] == "paid"
        again = await _ok(tenant, "POST", f"/v1/me/payments/{order_id}/sandbox-pay")
        assert again["outcome"] == "replayed"  # a replayed notification credits nothing
    assert await balance(h) == before + Decimal("77.00")


async def test_a_providers_notification_enters_only_through_the_gateway_and_a_forged_one_credits_nothing(
    gw: Stack,
) -> None:
    h = gw.gateway
    before = await balance(h)
    forged = b'{"id":"x","event_type":"TRANSACTION.SUCCESS","resource":{"ciphertext":"AAAA"}}'
    async with httpx.AsyncClient(base_url=h.url) as provider:
        response = await provider.post(
            "/v1/payments/notify/sandbox",
            content=forged,
            headers={
                "Content-Type": "application/json",
                "Wechatpay-Signature": "Zm9yZ2Vk",
                "Wechatpay-Nonce": "n",
                "Wechatpay-Timestamp": str(int(time.time())),
                "Wechatpay-Serial": "SANDBOX",
            },
        )
    # Billing saw it (the gateway cannot judge a signature) and refused it.
    assert response.json()["code"] == "callback_bad_signature", response.text
    assert await balance(h) == before

    # A genuine one, body and signature headers passed on byte for byte, is credited once.
    async with h.client("tenant_a") as tenant:
        order = await _ok(
            tenant,
            "POST",
            f"/v1/me/accounts/{ACCOUNT}/topups",
            json={"amount": "12.34", "provider": "sandbox"},
            headers={"Idempotency-Key": f"tokens-{uuid.uuid4().hex}"},
        )
    headers, body = gw.sandbox.notification(
        order_id=order["order_id"], transaction_id=f"SBX-{uuid.uuid4().hex[:12]}", total_fen=1234, now=datetime.now(UTC)
    )
    async with httpx.AsyncClient(base_url=h.url) as provider:
        for _ in range(2):  # the provider retries: the second credits nothing
            delivered = await provider.post("/v1/payments/notify/sandbox", content=body, headers=headers)
            assert delivered.status_code == 200, delivered.text
    assert await balance(h) == before + Decimal("12.34")


@pytest.mark.parametrize("environment", ["prod"])
def test_the_sandbox_pay_route_does_not_exist_in_prod(environment: str) -> None:
    from shuidian_gateway.app import create_app
    from shuidian_gateway.settings import GatewaySettings

    secret = SecretStr("p" * 48)
    settings = GatewaySettings(
        environment=environment,
        staff_api_key=secret,
        jwt_secret=secret,
        webhook_secret_key=secret,
        service_token_secret=secret,
    )
    paths = create_app(settings).openapi()["paths"]
    assert "/v1/payments/notify/{provider}" in paths
    assert "/v1/me/payments/{order_id}/sandbox-pay" not in paths
