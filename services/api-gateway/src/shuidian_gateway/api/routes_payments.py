"""Payment providers' way in: their asynchronous notifications reach billing only through here, with the
raw body and the signature headers unchanged (billing verifies them; the gateway cannot, and must not
re-encode what was signed). Where the sandbox provider runs (dev and test, never prod), a tenant can
also have the sandbox pay one of their open orders: billing signs the sandbox's notification and takes
it down the same verified callback path, so nothing is credited without a signed notification."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response

from shuidian_gateway.api.auth import Tenant
from shuidian_gateway.api.conventions import ERRORS, ObjectId
from shuidian_gateway.api.deps import UpstreamsDep
from shuidian_gateway.api.routes_me import Scopes, payment
from shuidian_gateway.settings import GatewaySettings
from shuidian_shared.contracts import billing as billing_contract

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
callbacks = APIRouter(prefix="/v1/payments", tags=["payments"], responses=ERRORS)
sandbox = APIRouter(prefix="/v1/me", tags=["tenant"], responses=ERRORS)


@callbacks.post(
    "/notify/{provider}",
    summary="支付回调 · A payment provider's asynchronous notification (verified by billing from its signature)",
    description="For WeChat Pay, Alipay and the sandbox provider, not for people: the body and signature headers "
    "go to billing unchanged; a forged or altered notification is refused and a replay credits nothing.",
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
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() in _FORWARDED or name.lower().startswith(_FORWARDED_PREFIX)
    }
    raw = await upstreams.raw(
        "billing", "POST", f"/v1/payments/notify/{provider}", content=await request.body(), headers=headers
    )
    # Errors came back as problems already (UpstreamError); a provider only tells "taken" (200) from "retry".
    return Response(raw.content, status_code=200, media_type=raw.headers.get("content-type"))


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
    return [callbacks] if settings.environment == "prod" else [callbacks, sandbox]
