"""Identity: sign-in, access-token expiry and forgery, refresh rotation and reuse detection,
back-off, API-key scopes and revocation, users with ETags, and the audit trail of writes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from shuidian_devstack.pytest_plugin import eventually
from shuidian_gateway.app import create_app
from shuidian_gateway.domain import security
from shuidian_gateway.settings import GatewaySettings
from shuidian_gateway.testing import JWT_SECRET, PASSWORD, Harness, gateway_harness
from shuidian_kit.db import create_engine

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url, login_max_failures=3) as harness:
        yield harness


async def _refresh(gw: Harness, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        return await client.post("/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": token})


async def test_sign_in_gives_a_bearer_token_that_names_the_role(gw: Harness) -> None:
    response = await gw.login("tenant_a")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == gw.settings.access_token_seconds
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {body['access_token']}"}) as c:
        me = (await c.get("/v1/auth/me")).json()
    assert (me["role"], me["tenant_id"], me["actions"]) == ("tenant", "T-A", [])


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "username": "nobody-at-all", "password": PASSWORD},
        {"grant_type": "password", "username": "admin", "password": "wrong password"},
        {"grant_type": "password", "username": "admin"},
        {"grant_type": "client_credentials", "username": "admin", "password": PASSWORD},
        {"grant_type": "refresh_token", "refresh_token": "never-issued"},
        # NUL cannot be stored or looked up in PostgreSQL text: refused up front, never a 500.
        {"grant_type": "password", "username": "ad\x00min", "password": PASSWORD},
        {"grant_type": "password", "username": "admin", "password": "pass\x00word"},
        {"grant_type": "refresh_token", "refresh_token": "never\x00issued"},
    ],
)
async def test_bad_grants_are_refused_with_a_problem(gw: Harness, form: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/auth/token", data=form)
    assert response.status_code in (400, 422)
    assert response.headers["content-type"] == "application/problem+json"
    assert "access_token" not in response.text


def _token(now: datetime, secret: str = JWT_SECRET, role: str = "system_admin") -> str:
    return security.encode_access_token(
        secret,
        "shuidian",
        user_id=str(uuid.uuid4()),
        role=role,
        estates=("*",),
        tenant_id=None,
        now=now,
        ttl=timedelta(minutes=15),
    )


@pytest.mark.parametrize(
    "token",
    [
        _token(datetime.now(UTC) - timedelta(hours=1)),  # expired
        _token(datetime.now(UTC), secret="another-secret-0123456789abcdef-xyz"),  # forged
        _token(datetime.now(UTC), role="emperor"),  # unknown role
        "not.a.jwt",
        "sk_deadbeef_not-a-key-we-issued",
    ],
)
async def test_expired_forged_or_malformed_access_tokens_are_401(gw: Harness, token: str) -> None:
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.get("/v1/users")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_fresh_valid_token_works(gw: Harness) -> None:
    async with httpx.AsyncClient(
        base_url=gw.url, headers={"Authorization": f"Bearer {_token(datetime.now(UTC))}"}
    ) as c:
        assert (await c.get("/v1/users")).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(gw: Harness) -> None:
    first = (await gw.login("cashier")).json()
    second = await _refresh(gw, first["refresh_token"])
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    # The spent token is presented again (stolen and replayed): refused, and the family is revoked ...
    replay = await _refresh(gw, first["refresh_token"])
    assert replay.status_code == 400
    assert "reuse" in replay.json()["detail"]
    # ... so even the legitimate, unspent successor no longer works.
    assert (await _refresh(gw, rotated["refresh_token"])).status_code == 400
    # Another sign-in of the same user is a separate family and is unaffected.
    other = (await gw.login("cashier")).json()
    assert (await _refresh(gw, other["refresh_token"])).status_code == 200


async def test_sign_out_revokes_the_refresh_token(gw: Harness) -> None:
    pair = (await gw.login("finance")).json()
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.post("/v1/auth/revoke", json={"refresh_token": pair["refresh_token"]})).status_code == 204
    assert (await _refresh(gw, pair["refresh_token"])).status_code == 400


async def test_repeated_failures_make_the_user_wait_not_a_lock_out(gw: Harness) -> None:
    async with gw.client("bootstrap") as admin:
        name = f"victim-{gw.suffix}"
        created = await admin.post(
            "/v1/users", json={"username": name, "password": PASSWORD, "role": "cashier", "estates": ["*"]}
        )
        assert created.status_code == 201
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(3):
            wrong = await client.post(
                "/v1/auth/token", data={"grant_type": "password", "username": name, "password": "guess-guess"}
            )
            assert wrong.status_code == 400
        right = await client.post(
            "/v1/auth/token", data={"grant_type": "password", "username": name, "password": PASSWORD}
        )
        assert right.status_code == 429  # too soon, even with the right password
        assert right.json()["code"] == "too_many_requests"
        assert int(right.headers["retry-after"]) >= 1

        async def after_the_wait() -> httpx.Response | None:
            answer = await client.post(
                "/v1/auth/token", data={"grant_type": "password", "username": name, "password": PASSWORD}
            )
            return answer if answer.status_code == 200 else None

        await eventually(after_the_wait, "the right password after the back-off", timeout=10)


async def test_users_carry_etags_and_if_match_protects_updates(gw: Harness) -> None:
    user_id = gw.user_ids["maintenance"]
    async with gw.client("admin") as admin:
        read = await admin.get(f"/v1/users/{user_id}")
        etag = read.headers["etag"]
        changed = await admin.patch(f"/v1/users/{user_id}", json={"display_name": "王师傅"}, headers={"If-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        stale = await admin.patch(f"/v1/users/{user_id}", json={"display_name": "x"}, headers={"If-Match": etag})
        assert stale.status_code == 412
        assert (await admin.get(f"/v1/users/{user_id}")).json()["display_name"] == "王师傅"


async def test_deactivating_a_user_revokes_their_refresh_tokens(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        name = f"leaver-{gw.suffix}"
        user = (
            await admin.post(
                "/v1/users", json={"username": name, "password": PASSWORD, "role": "finance", "estates": ["*"]}
            )
        ).json()
        async with httpx.AsyncClient(base_url=gw.url) as anon:
            pair = (
                await anon.post(
                    "/v1/auth/token", data={"grant_type": "password", "username": name, "password": PASSWORD}
                )
            ).json()
        assert (await admin.patch(f"/v1/users/{user['user_id']}", json={"active": False})).status_code == 200
    assert (await _refresh(gw, pair["refresh_token"])).status_code == 400
    assert (await gw.login("leaver")).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"username": "t1", "password": PASSWORD, "role": "tenant"},  # tenant without tenant_id
        {"username": "s1", "password": PASSWORD, "role": "cashier", "tenant_id": "T-A"},  # staff with one
        {"username": "s2", "password": "short", "role": "cashier"},
        {"username": "bad name!", "password": PASSWORD, "role": "cashier"},
        {"username": "s3", "password": PASSWORD, "role": "integrator"},
        {"username": "s4", "password": PASSWORD, "role": "cashier", "estates": ["E1/../E2"]},
        {"username": "t2", "password": PASSWORD, "role": "tenant", "tenant_id": None},
        {"username": "t3", "password": PASSWORD, "role": "tenant", "tenant_id": "T-A", "estates": ["E1"]},
    ],
)
async def test_invalid_users_are_refused(gw: Harness, body: dict[str, object]) -> None:
    async with gw.client("admin") as admin:
        assert (await admin.post("/v1/users", json=body)).status_code == 422


def test_the_user_schema_states_what_a_tenant_and_a_staff_user_need() -> None:
    """One object whose rule is in the schema (if/then/else), not a union told apart by `role` only:
    there, a body wrong for one branch could be right for the other, and a client generated from the
    contract could not tell which rules apply."""
    schema = create_app(GatewaySettings(environment="dev")).openapi()["components"]["schemas"]["UserIn"]
    assert "oneOf" not in schema
    assert "anyOf" not in schema
    assert schema["if"] == {"properties": {"role": {"const": "tenant"}}}
    assert schema["then"]["required"] == ["tenant_id"]
    assert schema["then"]["properties"]["tenant_id"] == {"type": "string"}
    assert schema["else"] == {"properties": {"tenant_id": {"type": "null"}}}


async def test_only_administrators_manage_users_and_keys(gw: Harness) -> None:
    for name in ("manager_e1", "cashier", "finance", "tenant_a"):
        async with gw.client(name) as client:
            assert (await client.get("/v1/users")).status_code == 403
            assert (
                await client.post("/v1/api-keys", json={"name": "x", "scopes": ["accounts:read"]})
            ).status_code == 403


async def test_api_key_scopes_and_immediate_revocation(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        created = await admin.post("/v1/api-keys", json={"name": "bureau", "scopes": ["accounts:read"]})
        assert created.status_code == 201
        key = created.json()["key"]
        listed = (await admin.get("/v1/api-keys")).json()["items"]
        assert key not in str(listed)
        assert created.json()["prefix"] in key
        async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as integrator:
            assert (await integrator.get("/v1/accounts/A-A")).status_code == 200
            # scope not granted: no top-ups, no commands
            topup = await integrator.post(
                "/v1/accounts/A-A/topups", json={"amount": "5.00"}, headers={"Idempotency-Key": "scope-test-1"}
            )
            assert topup.status_code == 403
            assert (await admin.delete(f"/v1/api-keys/{created.json()['key_id']}")).status_code == 200
            assert (await integrator.get("/v1/accounts/A-A")).status_code == 401
            tampered = key[:-2] + ("aa" if not key.endswith("aa") else "bb")
        async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {tampered}"}) as forged:
            assert (await forged.get("/v1/accounts/A-A")).status_code == 401


async def test_user_management_cannot_be_granted_to_a_key(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        response = await admin.post("/v1/api-keys", json={"name": "x", "scopes": ["users:manage"]})
    assert response.status_code == 422


async def test_every_write_is_audited_with_who_and_where(gw: Harness, database_url: str) -> None:
    async with gw.client("cashier", headers={"User-Agent": "counter-7"}) as cashier:
        response = await cashier.post(
            "/v1/accounts/A-A/topups",
            json={"amount": "10.00", "channel": "cash"},
            headers={"Idempotency-Key": f"audit-{gw.suffix}"},
        )
        assert response.status_code == 201
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT principal, role, status, client_address, user_agent FROM gateway.audit_log WHERE idempotency_key = :k"
                    ),
                    {"k": f"audit-{gw.suffix}"},
                )
            ).one()
    finally:
        await engine.dispose()
    assert row.principal == f"user:{gw.user_ids['cashier']}"
    assert (row.role, row.status, row.client_address, row.user_agent) == ("cashier", 201, "127.0.0.1", "counter-7")
