"""Calls to the internal services' HTTP APIs; their problem responses pass through unchanged."""

from __future__ import annotations

from typing import Any

import httpx

from shuidian_kit.errors import ServiceError


class UpstreamError(ServiceError):
    """An internal service answered with an error, or not at all."""

    def __init__(self, detail: str, *, status_code: int, code: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(detail, code=code, status_code=status_code)
        self.body = body


class Upstreams:
    def __init__(self, client: httpx.AsyncClient, urls: dict[str, str]) -> None:
        self._client = client
        self._urls = urls

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
        url = self._urls[service] + path
        try:
            response = await self._client.request(method, url, json=json, headers=headers, params=params)
        except httpx.HTTPError as err:
            raise UpstreamError(f"{service} is unavailable", status_code=503, code="upstream_unavailable") from err
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            code = body.get("code", "upstream_error") if isinstance(body, dict) else "upstream_error"
            raise UpstreamError(str(detail), status_code=response.status_code, code=str(code), body=body)
        return response.json()
