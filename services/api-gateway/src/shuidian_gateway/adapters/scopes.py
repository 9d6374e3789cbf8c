"""Tenant scopes from billing, cached for a few seconds."""

from __future__ import annotations

from shuidian_gateway.adapters.readcache import ReadCache
from shuidian_gateway.adapters.upstream import UpstreamError, Upstreams
from shuidian_gateway.domain.policy import Scope


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
