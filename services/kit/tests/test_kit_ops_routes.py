"""The operations routes read the runtime from the service's typed container, the app's one state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import httpx
from fastapi import FastAPI, Request

from shuidian_kit.service import Runtime, ops_router


class StubRuntime:
    """What `/readyz` asks of a runtime: a readiness map (the broker is away here)."""

    async def readiness(self) -> dict[str, bool]:
        return {"database": True, "mqtt": False, "supervisor": True}


@dataclass(frozen=True)
class Container:
    runtime: Runtime
    name: str


def runtime_of(request: Request) -> Runtime:
    container: Container = request.app.state.container
    return container.runtime


async def test_readyz_answers_from_the_runtime_the_container_holds() -> None:
    app = FastAPI()
    app.include_router(ops_router(runtime_of))
    app.state.container = Container(cast(Runtime, StubRuntime()), "one")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "checks": {"database": True, "mqtt": False, "supervisor": True}}
    assert not hasattr(app.state, "runtime"), "the runtime has one place: the container"
