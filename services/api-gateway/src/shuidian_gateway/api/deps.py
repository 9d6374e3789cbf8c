"""The container of what the gateway builds at start (app.py fills it), and the request dependencies that hand
its pieces to the routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from shuidian_gateway.adapters.idempotency import IdempotencyStore
from shuidian_gateway.adapters.identity import Identity
from shuidian_gateway.adapters.live import LiveHub, StaffHub
from shuidian_gateway.adapters.readcache import BalanceReadModel, ReadCache, VerifiedTokens
from shuidian_gateway.adapters.scopes import TenantScopes
from shuidian_gateway.adapters.upstream import Upstreams
from shuidian_gateway.adapters.webhooks import Webhooks
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.service import Runtime


@dataclass
class Container:
    """Every long-lived piece of a running gateway, built once in the lifespan."""

    runtime: Runtime
    settings: GatewaySettings
    upstreams: Upstreams
    identity: Identity
    idempotency: IdempotencyStore
    scopes: TenantScopes
    verified_tokens: VerifiedTokens
    balances: BalanceReadModel
    usage_today: ReadCache[tuple[str, str], bytes]  # (account, local day) → billing's answer
    live: LiveHub
    webhooks: Webhooks
    staff_live: StaffHub


def container_of(connection: HTTPConnection) -> Container:
    """The running gateway's container (a request's or a WebSocket's)."""
    container: Container = connection.app.state.container
    return container


async def _upstreams(connection: HTTPConnection) -> Upstreams:
    return container_of(connection).upstreams


async def _idempotency(connection: HTTPConnection) -> IdempotencyStore:
    return container_of(connection).idempotency


# Dependencies are coroutines: FastAPI runs a plain function in a worker thread, a cost on every request.
UpstreamsDep = Annotated[Upstreams, Depends(_upstreams)]
Idempotency = Annotated[IdempotencyStore, Depends(_idempotency)]
