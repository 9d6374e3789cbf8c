"""Calls to the internal services' HTTP APIs; their problem responses pass through unchanged.

Every call carries a service token (shuidian_kit.service_auth) whose subject is the principal the
request was authenticated as (`act_as`, set by the auth dependency for the rest of the request), or
`service:gateway` for the gateway's own work (background loops, anonymous routes).

A 404 or 405 that is not a problem document means the backend has no such route (yet): that
becomes a 501 problem, so clients can tell "no such object" from "not offered".
"""

from __future__ import annotations

import importlib.util
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import httpx

from shuidian_kit.errors import ServiceError
from shuidian_kit.service_auth import ServiceTokens

if TYPE_CHECKING:
    from shuidian_gateway.domain.policy import Principal

# httpcore tries `import sniffio` on every request; a failed import is not cached and costs ~0.3 ms each
# time. Marking the absent module as absent makes the miss immediate.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


class UpstreamError(ServiceError):
    """An internal service answered with an error, or not at all."""

    def __init__(self, detail: str, *, status_code: int, code: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(detail, code=code, status_code=status_code)
        self.body = body


SYSTEM_SUBJECT = "service:gateway"
# The principal this request acts as: a context variable, so every upstream call made while serving
# the request (directly, through a cache, or in a task it started) is signed for it.
_acting: ContextVar[Principal | None] = ContextVar("shuidian_gateway_acting", default=None)


def act_as(principal: Principal) -> None:
    """Sign the rest of this request's upstream calls on behalf of `principal`."""
    _acting.set(principal)


class Upstreams:
    def __init__(self, client: httpx.AsyncClient, urls: dict[str, str], tokens: ServiceTokens) -> None:
        self._client = client
        self._urls = urls
        self._tokens = tokens

    def _credential(self, service: str) -> str:
        principal = _acting.get()
        if principal is None:
            return f"Bearer {self._tokens.mint(service, SYSTEM_SUBJECT)}"
        estates = None if principal.all_estates else tuple(sorted(principal.estates))
        return f"Bearer {self._tokens.mint(service, principal.name, role=principal.role.value, estates=estates)}"

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        response = await self.raw(service, method, path, json=json, headers=headers, params=params)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as err:
            raise UpstreamError(f"{service} answered with invalid JSON", status_code=502, code="bad_upstream") from err

    async def raw(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """The response as it came (for PDFs and CSVs); errors raise UpstreamError like `call`."""
        url = self._urls[service] + path
        # The credential is set last: no header a caller passes on can stand in for it.
        headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        headers["Authorization"] = self._credential(service)
        try:
            response = await self._client.request(
                method, url, json=json, content=content, headers=headers, params=params
            )
        except httpx.InvalidURL as err:
            raise UpstreamError(f"not a valid identifier: {err}", status_code=400, code="bad_request") from err
        except httpx.HTTPError as err:
            raise UpstreamError(f"{service} is unavailable", status_code=503, code="upstream_unavailable") from err
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            is_problem = isinstance(body, dict) and "code" in body
            if response.status_code in (404, 405) and not is_problem:
                raise UpstreamError(
                    f"{service} does not offer {method} {path.split('?')[0]} yet",
                    status_code=501,
                    code="not_implemented",
                )
            detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            code = body.get("code", "upstream_error") if isinstance(body, dict) else "upstream_error"
            if response.status_code >= 500:
                raise UpstreamError(f"{service} failed: {detail}", status_code=502, code="bad_upstream")
            raise UpstreamError(
                str(detail), status_code=response.status_code, code=str(code), body=body if is_problem else None
            )
        return response
