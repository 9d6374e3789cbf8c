"""Who is calling: the request's principal from a bearer credential, and the checks routes declare.

A bearer credential is one of: the bootstrap staff key (a system administrator, for first set-up
and the dev stack), an integrator API key (`sk_<prefix>_<secret>`), or a JWT access token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import OAuth2PasswordBearer

from shuidian_gateway.adapters.upstream import act_as
from shuidian_gateway.api.deps import container_of
from shuidian_gateway.domain import security
from shuidian_gateway.domain.policy import Action, Principal, Role
from shuidian_gateway.errors import Forbidden, Unauthorised
from shuidian_kit.urlguard import IPNetwork

bearer = OAuth2PasswordBearer(
    tokenUrl="/v1/auth/token",
    auto_error=False,
    scheme_name="oauth2",
    description="`Authorization: Bearer <token>`: an access token from `POST /v1/auth/token`, or an integrator "
    "API key (`sk_…`) sent the same way.",
)
BOOTSTRAP = Principal("bootstrap", "staff-key", Role.SYSTEM_ADMIN, frozenset({"*"}))


def utcnow() -> datetime:
    return datetime.now(UTC)


async def principal_from_token(request: Request | WebSocket, token: str) -> Principal:
    gateway = container_of(request)
    settings = gateway.settings
    if hmac.compare_digest(token.encode(), settings.staff_api_key.get_secret_value().encode()):
        return BOOTSTRAP
    if security.api_key_prefix(token) is not None:
        principal = await gateway.identity.api_key_principal(token)
        if principal is None:
            raise Unauthorised("the API key is unknown or revoked")
        return principal
    verified = gateway.verified_tokens
    now = utcnow()
    principal = verified.get(token, now)
    if principal is not None:
        return principal
    try:
        claims = security.decode_access_token(
            settings.jwt_secret.get_secret_value(), settings.jwt_issuer, token, now=now
        )
        role = Role(claims.role)
    except (security.InvalidToken, ValueError) as err:
        raise Unauthorised(f"invalid access token: {err}") from err
    principal = Principal("user", claims.user_id, role, frozenset(claims.estates), claims.tenant_id)
    verified.put(token, principal, claims.expires_at)
    return principal


async def authenticated(request: Request, token: Annotated[str | None, Depends(bearer)]) -> Principal:
    if not token:
        raise Unauthorised("sign in first: Authorization: Bearer <access token or API key>")
    principal = await principal_from_token(request, token)
    request.state.principal = principal
    act_as(principal)  # upstream calls made for this request are signed on its behalf
    return principal


def require(action: Action) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting staff and integrators allowed `action`; tenants are always refused here."""

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if principal.role is Role.TENANT:
            raise Forbidden("tenant accounts use the /v1/me API / 租户请使用 /v1/me 接口")
        if not principal.may(action):
            raise Forbidden(f"your role or key does not allow {action.value} / 无权执行此操作")
        return principal

    check.__name__ = f"require_{action.name.lower()}"
    return check


async def tenant(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
    if principal.role is not Role.TENANT or principal.tenant_id is None:
        raise Forbidden("the /v1/me API is for tenant accounts / 仅限租户账号")
    return principal


Tenant = Annotated[Principal, Depends(tenant)]
Authenticated = Annotated[Principal, Depends(authenticated)]


def client_address(request: Request, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """The address a request came from: the connecting peer, unless that peer is one of the operator's
    reverse proxies (GATEWAY_TRUSTED_PROXIES); then the nearest X-Forwarded-For hop that is not one.
    Anyone else's X-Forwarded-For is ignored: a client can write it, so it cannot identify the client."""
    peer = request.client.host if request.client else "unknown"
    if not _within(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _within(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a proxy passed on garbage: count the proxy, not what it was told
    return peer


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
