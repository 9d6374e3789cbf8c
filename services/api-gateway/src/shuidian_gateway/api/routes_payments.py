"""Payment providers' way in: their asynchronous notifications reach billing only through here, with the
raw body and the signature headers unchanged (billing verifies them; the gateway cannot, and must not
re-encode what was signed). Where the sandbox provider runs (dev and test, never prod), a tenant can
also have the sandbox pay one of their open orders: billing signs the sandbox's notification and takes
it down the same verified callback path, so nothing is credited without a signed notification.

Notifications are rate-limited per sending address (per replica: `CallbackLimiter`; a 429 makes the
provider retry later, which both do for hours) and each one is logged and counted with billing's verdict."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import Counter

from shuidian_gateway.adapters.upstream import UpstreamError
from shuidian_gateway.api.auth import Tenant, client_address
from shuidian_gateway.api.conventions import ERRORS, ObjectId
from shuidian_gateway.api.deps import UpstreamsDep, container_of
from shuidian_gateway.api.routes_me import Scopes, payment
from shuidian_gateway.settings import GatewaySettings
from shuidian_shared.contracts import billing as billing_contract

log = logging.getLogger(__name__)
FORWARDED = Counter(
    "gateway_payment_callbacks_total",
    "provider notifications passed to billing (or refused here)",
    ["provider", "status"],
)
# Far above what one provider address sends (a city's evening peak is tens per second in all), far below
# what would hurt billing.
CALLBACK_LIMIT, CALLBACK_WINDOW_SECONDS = 300, 1.0

Provider = Literal["wechat", "alipay", "sandbox"]
# What a provider signs or billing needs to read the body: WeChat Pay v3 (and the sandbox) sign with
# `Wechatpay-*` headers; Alipay signs form fields inside the body.
_FORWARDED = ("content-type",)
_FORWARDED_PREFIX = "wechatpay-"

# What a provider reads of billing's answer (the rest of billing's NotifyOut is for people).
_PROVIDER_ANSWER = {
    "type": "object",
    "properties": {"code": {"type": "string", "example": "SUCCESS"}, "message": {"type": "string"}},
}
sandbox = APIRouter(prefix="/v1/me", tags=["tenant"], responses=ERRORS)


class CallbackLimiter:
    """At most `limit` notifications per `window` seconds from one address (fixed windows, in memory)."""

    def __init__(self, limit: int = CALLBACK_LIMIT, window: float = CALLBACK_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[int, int]] = {}  # address → (window number, count)

    def retry_after(self, address: str, now: float) -> float | None:
        """None if this notification may pass, else the seconds until the address's window ends."""
        current = math.floor(now / self.window)
        if len(self._counts) > 10_000:  # forget finished windows, so many addresses cannot grow it forever
            self._counts = {a: c for a, c in self._counts.items() if c[0] == current}
        number, count = self._counts.get(address, (current, 0))
        if number != current:
            count = 0
        if count >= self.limit:
            return (current + 1) * self.window - now
        self._counts[address] = (current, count + 1)
        return None


def callback_router(limiter: CallbackLimiter) -> APIRouter:
    """The providers' notification route, rate-limited by `limiter`."""
    callbacks = APIRouter(prefix="/v1/payments", tags=["payments"], responses=ERRORS)

    @callbacks.post(
        "/notify/{provider}",
        summary="支付回调 · A payment provider's asynchronous notification (verified by billing from its signature)",
        description="For WeChat Pay, Alipay and the sandbox provider, not for people: the body and signature "
        "headers go to billing unchanged; a forged or altered notification is refused and a replay credits nothing. "
        "Too many from one address in a second: 429 (the provider retries).",
        response_class=Response,
        responses={
            200: {
                "description": "taken: WeChat Pay and the sandbox get JSON, Alipay plain `success`",
                "content": {
                    "application/json": {"schema": _PROVIDER_ANSWER},
                    "text/plain": {"schema": {"type": "string"}, "example": "success"},
                },
            }
        },
    )
    async def notify(provider: Provider, request: Request, upstreams: UpstreamsDep) -> Response:
        address = client_address(request, container_of(request).settings.trusted_proxy_networks)
        wait = limiter.retry_after(address, time.monotonic())
        if wait is not None:
            FORWARDED.labels(provider, "429").inc()
            log.warning("payment notification from %s (%s) refused: over %d/s", address, provider, limiter.limit)
            return Response(
                '{"code":"FAIL","message":"too many notifications / 请求过多"}',
                status_code=429,
                media_type="application/json",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in _FORWARDED or name.lower().startswith(_FORWARDED_PREFIX)
        }
        body = await request.body()
        try:
            raw = await upstreams.raw(
                "billing", "POST", f"/v1/payments/notify/{provider}", content=body, headers=headers
            )
        except UpstreamError as err:
            FORWARDED.labels(provider, str(err.status_code)).inc()
            log.warning(
                "payment notification from %s (%s, %d bytes) refused by billing: %s %s",
                address,
                provider,
                len(body),
                err.status_code,
                err.code,
            )
            raise
        FORWARDED.labels(provider, "200").inc()
        log.info(
            "payment notification from %s (%s, %d bytes): %s",
            address,
            provider,
            len(body),
            raw.headers.get("x-payment-outcome", "taken"),
        )
        # Errors came back as problems already (UpstreamError); a provider only tells "taken" (200) from "retry".
        return Response(raw.content, status_code=200, media_type=raw.headers.get("content-type"))

    return callbacks


@sandbox.post(
    "/payments/{order_id}/sandbox-pay",
    response_model=billing_contract.NotifyOut,
    summary="沙箱支付 · Sandbox only: the provider pays one of my open orders (dev and test)",
    description="The sandbox provider signs a success notification for the order and billing verifies it like "
    "any provider's callback. Not offered where the sandbox is off (prod).",
)
async def sandbox_pay(order_id: ObjectId, principal: Tenant, scopes: Scopes, upstreams: UpstreamsDep) -> Any:
    await payment(order_id, principal, scopes, upstreams)  # 404 unless it is one of this tenant's orders
    return await upstreams.call("billing", "POST", f"/v1/payments/sandbox/orders/{order_id}/pay")


def routers(settings: GatewaySettings) -> list[APIRouter]:
    """The provider callbacks always; the sandbox's pay route only outside prod, where billing runs the sandbox."""
    callbacks = callback_router(CallbackLimiter())
    return [callbacks] if settings.environment == "prod" else [callbacks, sandbox]
