"""Sign-in abuse: the per-address limit holds across replicas and ignores X-Forwarded-For from
anyone but a configured proxy; failed passwords slow a user down instead of locking them out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import eventually
from shuidian_gateway.adapters.identity import Identity
from shuidian_gateway.adapters.live import Server
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import PASSWORD, STAFF_KEY, free_port
from shuidian_kit.db import create_engine

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def database(pg_server_url: str) -> AsyncIterator[str]:
    """A database for one test: attempt counters of other tests (all from 127.0.0.1) must not count."""
    name = f"shuidian_login_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        yield url
    finally:
        await infra.drop_database(pg_server_url, name)


@asynccontextmanager
async def gateway(database_url: str, mqtt_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """One gateway replica served as `python -m shuidian_gateway` serves it (uvicorn without proxy headers)."""
    port = free_port()
    settings = GatewaySettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"gw-login-{port}",
        mqtt_clean_session=True,
        http_port=port,
        staff_api_key=SecretStr(STAFF_KEY),
        **overrides,
    )
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def replicas(database_url: str, mqtt_url: str, count: int, **overrides: Any) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        # One after the other: the first runs the migrations.
        yield [await stack.enter_async_context(gateway(database_url, mqtt_url, **overrides)) for _ in range(count)]


async def new_user(client: httpx.AsyncClient) -> str:
    name = f"R-{uuid.uuid4().hex[:8]}"
    created = await client.post(
        "/v1/users",
        json={"username": name, "password": PASSWORD, "role": "tenant", "tenant_id": "T-A"},
        headers={"Authorization": f"Bearer {STAFF_KEY}"},
    )
    assert created.status_code == 201, created.text
    return name


def sign_in(client: httpx.AsyncClient, username: str, password: str, **headers: str) -> Any:
    return client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}, headers=headers
    )


async def test_the_address_limit_holds_across_replicas_whatever_x_forwarded_for_says(
    database: str, mqtt_url: str
) -> None:
    async with replicas(database, mqtt_url, 2, login_attempts_per_minute=6) as (one, two):
        # Counts are per minute: start well inside one, so the eight attempts fall in the same minute.
        while datetime.now(UTC).second >= 50:
            await asyncio.sleep(0.5)
        answers = [
            await sign_in((one, two)[i % 2], f"nobody-{i}", "wrong", **{"X-Forwarded-For": f"203.0.113.{i}"})
            for i in range(8)
        ]
    assert [a.status_code for a in answers] == [400] * 6 + [429] * 2
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["code"] == "too_many_requests"


async def test_x_forwarded_for_is_believed_from_a_configured_proxy_only(database: str, mqtt_url: str) -> None:
    async with gateway(database, mqtt_url, login_attempts_per_minute=3, trusted_proxies="127.0.0.0/8") as proxied:
        # Behind the proxy, each client has its own count: eight clients, one attempt each.
        spread = [
            (await sign_in(proxied, "nobody", "wrong", **{"X-Forwarded-For": f"198.51.100.{i}, 127.0.0.5"}))
            for i in range(8)
        ]
        # One client behind the proxy is limited, whatever it prepends to the header itself.
        same = [
            (await sign_in(proxied, "nobody", "wrong", **{"X-Forwarded-For": f"10.9.9.{i}, 192.0.2.77"}))
            for i in range(5)
        ]
    assert [a.status_code for a in spread] == [400] * 8
    assert 429 in [a.status_code for a in same]


async def test_failed_passwords_slow_a_user_down_on_every_replica_and_the_right_one_gets_in(
    database: str, mqtt_url: str
) -> None:
    options = {
        "login_max_failures": 3,
        "login_backoff_seconds": 1.0,
        "login_backoff_max_seconds": 2.0,
        "login_attempts_per_minute": 10_000,  # this test is about the user's wait, not the address's limit
    }
    async with replicas(database, mqtt_url, 2, **options) as (one, two):
        username = await new_user(one)
        for i in range(3):
            assert (await sign_in((one, two)[i % 2], username, "guess-guess")).status_code == 400
        held = await sign_in(two, username, PASSWORD)  # the right password, on the other replica, too soon
        assert held.status_code == 429
        assert 1 <= int(held.headers["retry-after"]) <= 2
        engine = create_engine(database, pool_size=1)
        try:
            async with engine.connect() as conn:
                query = text("SELECT retry_at, failed_logins FROM gateway.users WHERE username = :u")
                before = (await conn.execute(query, {"u": username})).one()
            for client in (one, two, one, two):  # guessing during the wait neither counts nor extends it
                assert (await sign_in(client, username, "guess-again")).status_code == 429
            async with engine.connect() as conn:
                assert (await conn.execute(query, {"u": username})).one() == before
        finally:
            await engine.dispose()

        async def signed_in() -> httpx.Response | None:
            answer = await sign_in(one, username, PASSWORD)
            assert answer.status_code in (200, 429), answer.text
            return answer if answer.status_code == 200 else None

        # After the wait the right password works: the user was never locked out.
        assert "access_token" in (await eventually(signed_in, "a sign-in after the back-off", 10, 0.2)).json()


@pytest.mark.parametrize(
    ("failures", "wait"), [(0, 0.0), (4, 0.0), (5, 1.0), (6, 2.0), (7, 4.0), (11, 60.0), (500, 60.0)]
)
def test_the_wait_doubles_from_the_threshold_up_to_the_cap(failures: int, wait: float) -> None:
    settings = GatewaySettings(environment="dev", login_max_failures=5)
    assert Identity(None, settings).backoff(failures) == wait  # type: ignore[arg-type]
