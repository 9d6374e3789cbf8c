"""The gateway's edge behaviour with no upstreams behind it: authentication, one problem format,
idempotency keys required on money POSTs, and every write audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_devstack.infra import free_port
from shuidian_devstack.platform import _serve
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.db import create_engine

pytestmark = pytest.mark.integration
KEY = "gateway-test-key-0123456789"


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(database_url: str, mqtt_url: str) -> AsyncIterator[str]:
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"gw-test-{port}",
        mqtt_clean_session=True,
        http_port=port,
        staff_api_key=SecretStr(KEY),
        collector_url=dead,
        billing_url=dead,
        control_url=dead,
        alarm_url=dead,
        upstream_timeout_seconds=1.0,
    )
    server, task = await _serve(create_app(settings), port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_staff_routes_need_the_key(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            response = await client.get("/v1/accounts/A101", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "unauthorised"


async def test_framework_errors_are_problems_and_keep_their_headers(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        unknown = await client.get("/no/such/route")
        wrong_method = await client.delete("/asyncapi.json")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "GET"


async def test_unreachable_upstream_is_a_503_problem_not_a_crash(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {KEY}"}) as client:
        response = await client.get("/v1/accounts/A101")
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"amount": "50.00"}, {}, 422),  # no idempotency key
        ({"amount": 50.0}, {"Idempotency-Key": "k-12345678"}, 422),  # float money
        ({"amount": "50.001"}, {"Idempotency-Key": "k-12345678"}, 422),  # sub-fen
        ({"amount": "50.00", "channel": "bitcoin"}, {"Idempotency-Key": "k-12345678"}, 422),
        ({"amount": "50.00", "extra": 1}, {"Idempotency-Key": "k-12345678"}, 422),
    ],
)
async def test_top_up_input_is_validated_before_anything_moves(
    gateway: str, body: dict[str, object], headers: dict[str, str], status: int
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {KEY}"}) as client:
        response = await client.post("/v1/accounts/A101/topups", json=body, headers=headers)
    assert response.status_code == status
    assert response.json()["code"] == "validation_error"


async def test_writes_are_audited(gateway: str, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {KEY}"}) as client:
        await client.post(
            "/v1/accounts/AUDIT-1/topups", json={"amount": "1.00"}, headers={"Idempotency-Key": "audit-key-1"}
        )
    engine = create_engine(database_url)
    try:
        # The audit row is written once the response has gone out: wait for it.
        async with asyncio.timeout(10):
            while True:
                async with engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            text(
                                "SELECT principal, method, status, idempotency_key FROM gateway.audit_log "
                                "WHERE path = :p"
                            ),
                            {"p": "/v1/accounts/AUDIT-1/topups"},
                        )
                    ).all()
                if rows:
                    break
                await asyncio.sleep(0.05)
        (row,) = rows
    finally:
        await engine.dispose()
    assert (row.principal, row.method, row.status, row.idempotency_key) == (
        "bootstrap:staff-key",
        "POST",
        503,
        "audit-key-1",
    )
