"""Service tokens: the only credential a backend accepts, and who a request acts for.

Only the gateway faces the outside world. Whoever calls a backend (the gateway, the dev stack, a test)
signs each request with a short-lived HS256 JWT under the one shared `SERVICE_TOKEN_SECRET`:

    iss  the calling service            aud  the service called (a token for billing is refused by alarm)
    sub  the principal it acts for      role, estates  optional, what the gateway knew of that principal
    iat, exp  ~60 s apart               jti  unique per token, for the logs

`sub` is `user:<id>`, `api_key:<prefix>` or `bootstrap:staff-key` for a signed-in caller at the gateway,
and `service:<name>` for work the platform does on its own. Every backend refuses a request without a
valid token for its audience with a 401 problem (`RequireServiceToken`, installed by
`require_service_tokens` where the app is built), except `/healthz`, `/readyz` and `/metrics`; routes
take the audit subject from the verified token (`Acting`), never from a body field or a header a client
can write.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shuidian_kit.errors import ServiceError
from shuidian_shared.settings import ServiceSettings

ALGORITHM = "HS256"
TOKEN_SECONDS = 60
# A receiver refuses tokens that live longer than this, whatever their signature: a leaked token
# must not stay useful, and a caller that mints long-lived ones is misconfigured.
MAX_TOKEN_SECONDS = 300
LEEWAY_SECONDS = 5  # clock skew between replicas
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STATE_KEY = "service_principal"


class InvalidServiceToken(ServiceError):
    """A request without a valid service token for this service."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="unauthorised", status_code=401)
        self.headers = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class ServicePrincipal:
    """Who a verified service token says the request acts for, and which service sent it."""

    subject: str
    issuer: str
    role: str | None = None
    estates: tuple[str, ...] | None = None


class ServiceTokens:
    """Mints tokens as `issuer` and verifies tokens addressed to a service, with one shared secret."""

    def __init__(
        self, secret: str, issuer: str, *, ttl: int = TOKEN_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self.issuer = issuer
        self._ttl = ttl
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ServiceSettings, issuer: str) -> ServiceTokens:
        return cls(settings.service_token_secret.get_secret_value(), issuer)

    def mint(
        self, audience: str, subject: str, *, role: str | None = None, estates: tuple[str, ...] | None = None
    ) -> str:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + self._ttl,
            "jti": uuid.uuid4().hex,
        }
        if role is not None:
            claims["role"] = role
        if estates is not None:
            claims["estates"] = list(estates)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def headers(self, audience: str, subject: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(audience, subject, **claims)}"}

    def auth(self, audience: str | Mapping[str, str], subject: str) -> ServiceTokenAuth:
        """An httpx auth signing every request of a client with a fresh token (clients outlive a token):
        for one service, or for several by base URL (`{"http://127.0.0.1:8002": "billing", …}`)."""
        return ServiceTokenAuth(self, audience, subject)

    def verify(self, token: str, audience: str) -> ServicePrincipal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
            )
        except jwt.PyJWTError as err:
            raise InvalidServiceToken(f"invalid service token: {err}") from err
        if claims["exp"] - claims["iat"] > MAX_TOKEN_SECONDS:
            raise InvalidServiceToken(f"invalid service token: it lives longer than {MAX_TOKEN_SECONDS} s")
        subject, issuer, role, estates = claims["sub"], claims["iss"], claims.get("role"), claims.get("estates")
        if not isinstance(subject, str) or not subject or not isinstance(issuer, str):
            raise InvalidServiceToken("invalid service token: no subject")
        if role is not None and not isinstance(role, str):
            raise InvalidServiceToken("invalid service token: role is not a string")
        if estates is not None and not (isinstance(estates, list) and all(isinstance(e, str) for e in estates)):
            raise InvalidServiceToken("invalid service token: estates is not a list of strings")
        return ServicePrincipal(subject, issuer, role, tuple(estates) if estates is not None else None)


class ServiceTokenAuth(httpx.Auth):
    """Signs each request of an httpx client on behalf of one subject: for one backend, or for the
    backend whose base URL the request's URL starts with (other URLs go unsigned)."""

    def __init__(self, tokens: ServiceTokens, audience: str | Mapping[str, str], subject: str) -> None:
        self._tokens = tokens
        self._audience = audience
        self._subject = subject

    def _audience_of(self, url: str) -> str | None:
        if isinstance(self._audience, str):
            return self._audience
        return next((name for base, name in self._audience.items() if url.startswith(base.rstrip("/") + "/")), None)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        audience = self._audience_of(str(request.url))
        if audience is not None:
            request.headers["Authorization"] = f"Bearer {self._tokens.mint(audience, self._subject)}"
        yield request


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class RequireServiceToken:
    """ASGI middleware: nothing but the operations endpoints answers without a valid service token."""

    def __init__(self, app: ASGIApp, tokens: ServiceTokens, audience: str) -> None:
        self.app = app
        self._tokens = tokens
        self._audience = audience

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            if token is None:
                raise InvalidServiceToken("this service answers only requests signed with a service token")
            principal = self._tokens.verify(token, self._audience)
        except InvalidServiceToken as err:
            await _refuse(scope, send, err)
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, err: InvalidServiceToken) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "service token required"})
        return
    body = json.dumps(
        {
            "type": "https://shuidian.dev/problems/unauthorised",
            "title": "unauthorised",
            "status": 401,
            "detail": err.detail,
            "code": err.code,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def require_service_tokens(app: FastAPI, settings: ServiceSettings, audience: str) -> None:
    """Make `app` (the `audience` service) refuse every request without a valid service token for it."""
    app.add_middleware(RequireServiceToken, tokens=ServiceTokens.from_settings(settings, audience), audience=audience)
    app.state.service_audience = audience  # lets the test helpers sign their clients for it


def service_principal(request: Request) -> ServicePrincipal:
    principal = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(principal, ServicePrincipal):  # a route of an app built without the middleware
        raise InvalidServiceToken("this service answers only requests signed with a service token")
    return principal


def acting_subject(request: Request) -> str:
    """The audit subject of a request: the verified token's `sub`."""
    return service_principal(request).subject


ActingPrincipal = Annotated[ServicePrincipal, Depends(service_principal)]
Acting = Annotated[str, Depends(acting_subject)]
