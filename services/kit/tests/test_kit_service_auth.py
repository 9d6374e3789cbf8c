"""Service tokens: a backend answers only requests signed for it, and routes see who the token acts for."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from shuidian_kit.service import install_error_handlers, ops_router, started
from shuidian_kit.service_auth import Acting, ActingPrincipal, ServiceTokens, require_service_tokens
from shuidian_shared.settings import DEV_SERVICE_TOKEN_SECRET, ServiceSettings

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"
SETTINGS = ServiceSettings(environment="test", service_token_secret=SecretStr(SECRET))


def backend() -> tuple[FastAPI, list[str]]:
    """A backend whose one write records who it acted for."""
    app = FastAPI()
    install_error_handlers(app)
    require_service_tokens(app, SETTINGS, "billing")
    app.include_router(ops_router(lambda request: started(None)))  # no lifespan here: only /healthz and /metrics
    done: list[str] = []

    @app.post("/v1/write")
    async def write(actor: Acting, principal: ActingPrincipal) -> dict[str, str | None]:
        done.append(actor)
        return {"actor": actor, "issuer": principal.issuer, "role": principal.role}

    return app, done


async def post(app: FastAPI, headers: dict[str, str] | None = None, path: str = "/v1/write") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing") as client:
        return await client.post(path, headers=headers or {}, json={"by": "someone-else"})


def forged(**overrides: object) -> str:
    now = int(time.time())
    claims = {"iss": "gateway", "aud": "billing", "sub": "user:u1", "iat": now, "exp": now + 60, "jti": "j"}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


async def test_a_token_for_this_service_is_answered_and_its_subject_is_the_actor() -> None:
    app, done = backend()
    tokens = ServiceTokens(SECRET, "gateway")
    response = await post(app, tokens.headers("billing", "user:u1", role="cashier"))
    assert response.status_code == 200, response.text
    assert response.json() == {"actor": "user:u1", "issuer": "gateway", "role": "cashier"}
    assert done == ["user:u1"]


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("no token", {}),
        ("not a bearer", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("another audience", ServiceTokens(SECRET, "gateway").headers("alarm", "user:u1")),
        ("another key", ServiceTokens("another-secret-of-at-least-thirty-two-b", "gateway").headers("billing", "u")),
        (
            "expired",
            ServiceTokens(SECRET, "gateway", clock=lambda: time.time() - 120).headers("billing", "user:u1"),
        ),
        ("issued in the future", {"Authorization": f"Bearer {forged(iat=int(time.time()) + 600)}"}),
        ("living too long", {"Authorization": f"Bearer {forged(exp=int(time.time()) + 3600)}"}),
        ("no subject", {"Authorization": f"Bearer {forged(sub=None)}"}),
        ("no expiry", {"Authorization": f"Bearer {forged(exp=None)}"}),
        ("unsigned", {"Authorization": "Bearer " + jwt.encode({"sub": "x", "aud": "billing"}, "", "none")}),
    ],
)
async def test_anything_else_is_refused_with_a_401_problem_and_nothing_happens(
    case: str, headers: dict[str, str]
) -> None:
    app, done = backend()
    response = await post(app, headers)
    assert response.status_code == 401, case
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorised"
    assert done == []


async def test_unknown_paths_and_the_api_docs_are_refused_too_but_operations_endpoints_are_open() -> None:
    app, _ = backend()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing") as client:
        assert (await client.get("/v1/nowhere")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_an_httpx_client_signs_each_request_for_the_backend_its_url_names() -> None:
    app, done = backend()
    auth = ServiceTokens(SECRET, "devstack").auth({"http://billing": "billing", "http://alarm": "alarm"}, "svc:x")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), auth=auth) as client:
        assert (await client.post("http://billing/v1/write")).status_code == 200
        assert (await client.post("http://alarm/v1/write")).status_code == 401  # signed for alarm, not billing
        assert (await client.post("http://other/v1/write")).status_code == 401  # not signed at all
    assert done == ["svc:x"]


def test_the_dev_secret_serves_dev_and_test_but_prod_needs_a_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVICE_TOKEN_SECRET", raising=False)  # the test run sets its own
    assert ServiceSettings(environment="dev").service_token_secret.get_secret_value() == DEV_SERVICE_TOKEN_SECRET
    assert ServiceSettings(environment="test").service_token_secret.get_secret_value() == DEV_SERVICE_TOKEN_SECRET
    with pytest.raises(ValidationError, match="service_token_secret"):
        ServiceSettings(environment="prod")
    with pytest.raises(ValidationError, match="service_token_secret"):
        ServiceSettings(environment="prod", service_token_secret=SecretStr("short-but-not-a-placeholder"))
    strong = ServiceSettings(environment="prod", service_token_secret=SecretStr(SECRET))
    assert strong.service_token_secret.get_secret_value() == SECRET


def test_a_subclass_listing_its_own_secrets_cannot_drop_the_service_token_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SERVICE_TOKEN_SECRET", raising=False)

    class Own(ServiceSettings):
        def secret_fields(self) -> dict[str, SecretStr]:
            return {}

    with pytest.raises(ValidationError, match="service_token_secret"):
        Own(environment="prod")


def test_the_secret_is_read_from_the_unprefixed_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_TOKEN_SECRET", SECRET)
    assert ServiceSettings().service_token_secret.get_secret_value() == SECRET
