"""Responses of money and command POSTs stored per (principal, Idempotency-Key), so a replay answers the
same and the same key with another request is a conflict."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_gateway.adapters.upstream import UpstreamError
from shuidian_gateway.domain.policy import Principal
from shuidian_gateway.errors import GatewayError, IdempotencyConflict


class IdempotencyStore:
    """Responses of money and command POSTs stored per (principal, Idempotency-Key)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(
        self,
        principal: Principal,
        key: str,
        request: Request,
        body: Any,
        call: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> JSONResponse:
        request_hash = hashlib.sha256(
            json.dumps([request.method, request.url.path, jsonable_encoder(body)], sort_keys=True).encode()
        ).hexdigest()
        params = {"p": principal.name, "k": key, "h": request_hash}
        async with self._engine.begin() as conn:
            claimed = (
                await conn.execute(
                    text(
                        "INSERT INTO gateway.idempotency (principal, key, request_hash) VALUES (:p, :k, :h) "
                        "ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    params,
                )
            ).first()
            if claimed is None:
                stored = (
                    await conn.execute(
                        text(
                            "SELECT request_hash, status, body FROM gateway.idempotency WHERE principal = :p AND key = :k"
                        ),
                        params,
                    )
                ).one()
        if claimed is None:
            if stored.request_hash != request_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a different request / 幂等键已用于其他请求"
                )
            if stored.status is None:
                raise IdempotencyConflict("a request with this Idempotency-Key is still being processed; retry shortly")
            return JSONResponse(
                json.loads(stored.body),
                status_code=stored.status,
                headers={"Idempotent-Replayed": "true"},
                media_type="application/problem+json" if stored.status >= 400 else None,
            )
        try:
            status, result = await call()
        except (UpstreamError, GatewayError) as err:
            if err.status_code >= 500:
                await self._forget(params)
                raise
            status, result = err.status_code, None
            payload = getattr(err, "body", None) or {
                "type": f"https://shuidian.dev/problems/{err.code}",
                "title": err.code.replace("_", " "),
                "status": err.status_code,
                "detail": err.detail,
                "code": err.code,
            }
            await self._store(params, status, payload)
            raise
        except BaseException:
            await self._forget(params)
            raise
        await self._store(params, status, result)
        return JSONResponse(jsonable_encoder(result), status_code=status)

    async def _store(self, params: dict[str, Any], status: int, body: Any) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text("UPDATE gateway.idempotency SET status = :s, body = :b WHERE principal = :p AND key = :k"),
                {**params, "s": status, "b": json.dumps(jsonable_encoder(body)).encode()},
            )

    async def _forget(self, params: dict[str, Any]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(text("DELETE FROM gateway.idempotency WHERE principal = :p AND key = :k"), params)
