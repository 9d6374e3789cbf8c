"""Live push: `/v1/me/live` streams a tenant's meter states, balance events and alarms from MQTT,
filtered to the tenant's scope, over a WebSocket.

Authenticate with `Authorization: Bearer <access token>` or, where a browser cannot set headers,
`?access_token=`. Each frame is JSON: `{"type": "meter_state" | "balance" | "alarm", "data": {…}}`.
A slow client loses its oldest frames rather than holding the others up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from shuidian_gateway.auth import Scope, TenantScopes, principal_from_token
from shuidian_gateway.errors import GatewayError
from shuidian_gateway.policy import Role
from shuidian_shared.messages import AlarmEvent, BalanceEvent, DeviceState

log = logging.getLogger(__name__)
QUEUE_SIZE = 256
SCOPE_REFRESH_SECONDS = 30.0


@dataclass(eq=False)
class LiveClient:
    scope: Scope
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, frame: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest: live values are superseded anyway
        self.queue.put_nowait(frame)


def audience(message: BaseModel) -> tuple[str, set[str]]:
    """The frame type of a message and the ids (meters, accounts, alarm sources) it is about."""
    if isinstance(message, DeviceState):
        return "meter_state", {message.meter_id}
    if isinstance(message, BalanceEvent):
        return "balance", {message.account_id}
    if isinstance(message, AlarmEvent):
        return "alarm", {message.source_id}
    raise TypeError(f"not a live message: {type(message).__name__}")


class LiveHub:
    def __init__(self) -> None:
        self._clients: set[LiveClient] = set()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def connect(self, scope: Scope) -> LiveClient:
        client = LiveClient(scope)
        self._clients.add(client)
        return client

    def disconnect(self, client: LiveClient) -> None:
        self._clients.discard(client)

    async def on_message(self, message: BaseModel, topic: str) -> None:
        kind, ids = audience(message)
        frame = {"type": kind, "data": message.model_dump(mode="json")}
        for client in list(self._clients):
            scope = client.scope
            if ids & (scope.meters | scope.accounts):
                client.offer(frame)


router = APIRouter()


@router.websocket("/v1/me/live")
async def live(websocket: WebSocket) -> None:
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else websocket.query_params.get("access_token", "")
    try:
        principal = await principal_from_token(websocket, token) if token else None
    except GatewayError:
        principal = None
    # Accept first, so the client reads why it is refused from the close code (4401 / 4403).
    await websocket.accept()
    if principal is None:
        await websocket.close(code=4401, reason="unauthorised")
        return
    if principal.role is not Role.TENANT or principal.tenant_id is None:
        await websocket.close(code=4403, reason="tenant accounts only")
        return
    scopes: TenantScopes = websocket.app.state.scopes
    hub: LiveHub = websocket.app.state.live
    client = hub.connect(await scopes.of(principal.tenant_id))
    receiver = asyncio.create_task(_drain(websocket))
    try:
        while True:
            getter = asyncio.ensure_future(client.queue.get())
            done, _ = await asyncio.wait(
                {getter, receiver}, timeout=SCOPE_REFRESH_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
            if receiver in done:
                break
            if getter in done:
                await websocket.send_json(getter.result())
            else:
                client.scope = await scopes.of(principal.tenant_id)  # leases change: follow them
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.disconnect(client)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await receiver


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, so a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()
