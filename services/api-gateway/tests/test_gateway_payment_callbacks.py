"""The providers' notification route on the gateway: body and signature headers passed to billing
byte for byte (nothing else), billing's verdict passed back, and a flood from one address refused
with 429 before it reaches billing. The real gateway-to-billing path with a signed sandbox
notification is in test_gateway_service_tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_gateway.adapters.upstream import UpstreamError
from shuidian_gateway.api.routes_payments import CallbackLimiter, callback_router
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.service import install_error_handlers


@dataclass
class Billing:
    """Stands in for the gateway's upstream port to billing: records what it was sent."""

    sent: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    refuse: bool = False

    async def raw(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert (service, method) == ("billing", "POST")
        self.sent.append((path, kwargs["content"], kwargs["headers"]))
        if self.refuse:
            raise UpstreamError("bad signature", status_code=400, code="callback_bad_signature")
        return httpx.Response(
            200, content=b"success", headers={"content-type": "text/plain", "x-payment-outcome": "accepted"}
        )


def gateway(billing: Billing, limiter: CallbackLimiter) -> FastAPI:
    secret = SecretStr("p" * 48)
    settings = GatewaySettings(
        environment="test",
        staff_api_key=secret,
        jwt_secret=secret,
        webhook_secret_key=secret,
        service_token_secret=secret,
    )
    app = FastAPI()
    install_error_handlers(app)  # as the gateway answers errors: problem+json
    app.include_router(callback_router(limiter))
    app.state.container = SimpleNamespace(settings=settings, upstreams=billing)
    return app


def provider(app: FastAPI, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 4000)), base_url="http://gw")


def test_the_limiter_counts_per_address_and_window() -> None:
    limiter = CallbackLimiter(limit=2, window=10.0)
    assert [limiter.retry_after("a", 100.0), limiter.retry_after("a", 101.0)] == [None, None]
    assert limiter.retry_after("a", 102.5) == 7.5
    assert limiter.retry_after("b", 102.5) is None
    assert limiter.retry_after("a", 110.0) is None  # the next window


async def test_body_and_signature_headers_pass_unchanged_and_nothing_else() -> None:
    billing = Billing()
    body = '{"id":"EV-1","resource":{"ciphertext":"AAAA"},"summary":"支付成功"}'.encode()
    headers = {
        "Content-Type": "application/json",
        "Wechatpay-Signature": "c2lnbmF0dXJl",
        "Wechatpay-Timestamp": "1765090000",
        "Wechatpay-Nonce": "n0nce",
        "Wechatpay-Serial": "5157F09E",
        "Cookie": "session=secret",
        "Authorization": "Bearer someone",
    }
    async with provider(gateway(billing, CallbackLimiter()), "101.226.103.1") as client:
        response = await client.post("/v1/payments/notify/wechat", content=body, headers=headers)
    assert (response.status_code, response.text) == (200, "success")
    [(path, sent, forwarded)] = billing.sent
    assert (path, sent) == ("/v1/payments/notify/wechat", body)
    assert forwarded == {k.lower(): v for k, v in headers.items() if k not in ("Cookie", "Authorization")}


async def test_a_flood_from_one_address_is_refused_before_billing() -> None:
    billing = Billing()
    app = gateway(billing, CallbackLimiter(limit=3, window=60.0))
    async with provider(app, "203.0.113.9") as flood, provider(app, "101.226.103.1") as wechat:
        answers = [(await flood.post("/v1/payments/notify/alipay", content=b"a=1")).status_code for _ in range(5)]
        other = await wechat.post("/v1/payments/notify/wechat", content=b"{}")
    assert answers == [200, 200, 200, 429, 429]
    assert other.status_code == 200
    assert len(billing.sent) == 4


async def test_billings_refusal_reaches_the_provider() -> None:
    billing = Billing(refuse=True)
    async with provider(gateway(billing, CallbackLimiter()), "203.0.113.9") as client:
        response = await client.post("/v1/payments/notify/wechat", content=b"{}")
    assert (response.status_code, response.json()["code"]) == (400, "callback_bad_signature")
