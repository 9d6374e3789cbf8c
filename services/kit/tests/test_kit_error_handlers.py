"""The one problem-details mapping of a service's errors, headers included."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from shuidian_kit.errors import NotFound, ServiceError
from shuidian_kit.service import install_error_handlers


class Throttled(ServiceError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


def app_raising(error: ServiceError) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    return app


async def call(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kit") as client:
        return await client.get("/boom")


async def test_a_service_error_carries_its_headers_into_the_problem_response() -> None:
    response = await call(app_raising(Throttled("slow down / 请稍后再试", retry_after=37)))
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "37"
    assert response.json() == {
        "type": "https://shuidian.dev/problems/too_many_requests",
        "title": "too many requests",
        "status": 429,
        "detail": "slow down / 请稍后再试",
        "code": "too_many_requests",
    }


async def test_a_service_error_without_headers_adds_none() -> None:
    response = await call(app_raising(NotFound("no such meter")))
    assert response.status_code == 404
    assert "retry-after" not in response.headers
    assert response.json()["code"] == "not_found"
