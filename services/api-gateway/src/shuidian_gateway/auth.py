"""Who is calling: the request's principal from a bearer credential, and the checks routes declare.

A bearer credential is one of: the bootstrap staff key (a system administrator, for first set-up
and the dev stack), an integrator API key (`sk_<prefix>_<secret>`), or a JWT access token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import OAuth2PasswordBearer

from shuidian_gateway import security
from shuidian_gateway.errors import Forbidden, Unauthorised
from shuidian_gateway.identity import Identity
from shuidian_gateway.policy import Action, Principal, Role
from shuidian_gateway.readcache import ReadCache
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.upstream import UpstreamError, Upstreams, act_as
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
    settings: GatewaySettings = request.app.state.settings
    if hmac.compare_digest(token.encode(), settings.staff_api_key.get_secret_value().encode()):
        return BOOTSTRAP
    if security.api_key_prefix(token) is not None:
        identity: Identity = request.app.state.identity
        principal = await identity.api_key_principal(token)
        if principal is None:
            raise Unauthorised("the API key is unknown or revoked")
        return principal
    verified: VerifiedTokens = request.app.state.verified_tokens
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


class VerifiedTokens:
    """Access tokens whose signature and claims were verified, until they expire (bounded, least
    recently used out first). A token is a signed, immutable statement, so verifying it again would
    give the same principal; its expiry is still checked on every use."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._tokens: OrderedDict[str, tuple[datetime, Principal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token: str, now: datetime) -> Principal | None:
        hit = self._tokens.get(token)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._tokens[token]
            return None
        self._tokens.move_to_end(token)
        return hit[1]

    def put(self, token: str, principal: Principal, expires_at: datetime) -> None:
        self._tokens[token] = (expires_at, principal)
        self._tokens.move_to_end(token)
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)


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


@dataclass(frozen=True)
class Scope:
    """What a tenant may see: the accounts, rooms and meters of their active leases."""

    tenant_id: str
    accounts: frozenset[str]
    rooms: frozenset[str]
    meters: frozenset[str]

    def owns(self, kind: str, object_id: str) -> bool:
        return object_id in {"account": self.accounts, "room": self.rooms, "meter": self.meters}[kind]


def _ids(items: object, key: str) -> frozenset[str]:
    if not isinstance(items, list):
        return frozenset()
    return frozenset(
        str(i[key]) if isinstance(i, dict) else str(i)
        for i in items
        if isinstance(i, (str, dict)) and (not isinstance(i, dict) or key in i)
    )


class TenantScopes:
    """Tenant scope from billing's `GET /v1/tenants/{tenant_id}/scope`, cached for a few seconds."""

    def __init__(self, upstreams: Upstreams, ttl: float) -> None:
        self._upstreams = upstreams
        self._cache: ReadCache[str, Scope] = ReadCache(ttl)

    async def of(self, tenant_id: str) -> Scope:
        return await self._cache.get(tenant_id, lambda: self._fetch(tenant_id))

    async def _fetch(self, tenant_id: str) -> Scope:
        try:
            body = await self._upstreams.call("billing", "GET", f"/v1/tenants/{tenant_id}/scope")
        except UpstreamError as err:
            if err.status_code != 404:
                raise
            body = {}  # a tenant billing does not know has no leases: they see nothing
        return Scope(
            tenant_id,
            _ids(body.get("accounts"), "account_id"),
            _ids(body.get("rooms"), "room_id"),
            _ids(body.get("meters"), "meter_id"),
        )
