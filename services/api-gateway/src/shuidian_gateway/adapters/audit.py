"""Every write through the gateway is audited: who, what, when, from where, and how it ended."""

from __future__ import annotations

from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shuidian_gateway.domain.policy import Principal
from shuidian_kit.service import Runtime

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED = "/v1/"


class AuditWrites:
    """Every write is audited: who, what, when, from where, and how it ended (reads pass straight through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or not scope["path"].startswith(AUDITED):
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state", {})
        principal: Principal | None = state.get("principal")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        runtime: Runtime = scope["app"].state.container.runtime
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO gateway.audit_log (principal, role, method, path, status, client_address, "
                    "idempotency_key, user_agent) VALUES (:p, :r, :m, :u, :s, :c, :k, :a)"
                ),
                {
                    "p": principal.name if principal else state.get("principal_name", "anonymous"),
                    "r": principal.role.value if principal else None,
                    "m": scope["method"],
                    "u": scope["path"],
                    "s": status,
                    "c": client[0] if client else None,
                    "k": headers.get("idempotency-key"),
                    "a": headers.get("user-agent", "")[:300],
                },
            )
