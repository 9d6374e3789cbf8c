"""What a client reads off the gateway's edge, on a real socket in front of the test doubles: a 405 names exactly
the methods of its path, a browser on a configured origin passes a real preflight and reads the convention
headers (and one on another origin does not), tenant money is shown in fen with the exact figure beside it,
and months are the strict YYYY-MM everywhere, required where the backend needs one."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio

from shuidian_devstack import infra
from shuidian_gateway.api.routes_me import fen, usage_in_fen
from shuidian_gateway.testing import Harness, gateway_harness

pytestmark = pytest.mark.integration
ORIGIN = "https://app.shuidian.example"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    name = f"shuidian_gw_edge_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        async with gateway_harness(url, mqtt_url, complete_backends=True, cors_origins=f"{ORIGIN}, ") as harness:
            yield harness
    finally:
        await infra.drop_database(pg_server_url, name)


async def test_a_405_lists_exactly_the_methods_its_path_supports(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        document = (await admin.get("/openapi.json")).json()
        templates = {
            re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"): operations
            for path, operations in document["paths"].items()
        }
        wrong = []
        for path in document["paths"]:
            concrete = re.sub(r"\{[^}]+\}", "x1", path)
            # The methods of every documented path this URL is an instance of (/v1/commands/batch is also a command).
            documented = {
                method.upper()
                for template, operations in templates.items()
                if template.match(concrete)
                for method in operations
                if method.upper() in METHODS
            }
            method = next(m for m in METHODS if m not in documented)
            answer = await admin.request(method, concrete)
            allowed = {m.strip() for m in answer.headers.get("allow", "").split(",") if m.strip()}
            if answer.status_code != 405 or allowed != documented:
                wrong.append(f"{method} {path}: {answer.status_code}, Allow {sorted(allowed)} ≠ {sorted(documented)}")
    assert wrong == [], "\n".join(wrong)


async def test_a_browser_on_a_configured_origin_passes_a_real_preflight(gw: Harness) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type, if-match",
    }
    async with gw.client() as browser:
        allowed = await browser.options("/v1/estates/E1", headers=preflight)
        refused = await browser.options("/v1/estates/E1", headers={**preflight, "Origin": "https://evil.example"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "PUT" in allowed.headers["access-control-allow-methods"]
    assert {"authorization", "content-type", "if-match"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_a_browser_reads_the_convention_headers_of_an_answer(gw: Harness) -> None:
    async with gw.client("admin", headers={"Origin": ORIGIN}) as browser:
        read = await browser.get("/v1/estates/E1")
        refused = await browser.get("/v1/estates/E1", headers={"Authorization": "Bearer nonsense"})
    assert read.status_code == 200, read.text
    assert read.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in read.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "location", "retry-after"} <= exposed
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the browser may read why


async def test_without_configured_origins_there_is_no_cross_origin_access(pg_server_url: str, mqtt_url: str) -> None:
    name = f"shuidian_gw_nocors_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        async with gateway_harness(url, mqtt_url) as harness, harness.client() as browser:
            preflight = await browser.options(
                "/v1/me/accounts", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            )
    finally:
        await infra.drop_database(pg_server_url, name)
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


async def test_a_tenant_sees_money_in_fen_with_the_exact_figure_beside_it(gw: Harness) -> None:
    account = gw.fake.households[0].account_id
    gw.fake.balances[account] = {"balance": "3.67", "available": "3.6669999999"}
    async with gw.client("tenant_a") as tenant:
        one = await tenant.get(f"/v1/me/accounts/{account}")
        listed = await tenant.get("/v1/me/accounts")
    assert one.status_code == 200, one.text
    assert (one.json()["available"], one.json()["available_exact"]) == ("3.66", "3.6669999999")
    assert one.json()["balance"] == "3.67"
    assert [a["available"] for a in listed.json() if a["account_id"] == account] == ["3.66"]


def test_money_is_cut_to_the_fen_toward_zero_and_usage_keeps_its_exact_cost() -> None:
    assert [str(fen(Decimal(v))) for v in ("3.6669", "-0.0049", "-1.239", "0", "12")] == [
        "3.66",
        "0.00",
        "-1.23",
        "0.00",
        "12.00",
    ]
    found = {"account_id": "A1", "buckets": [{"start": "2026-12-01T00:00:00+08:00", "cost": "0.5883000000"}]}
    assert usage_in_fen(found)["buckets"] == [
        {"start": "2026-12-01T00:00:00+08:00", "cost": "0.58", "cost_exact": "0.5883000000"}
    ]


@pytest.mark.parametrize("month", ["0000-01", "9999-12", "٢٠٢٦-01", "2026-13", "2026-1"])
async def test_a_statement_month_is_a_strict_month_of_this_century(gw: Harness, month: str) -> None:
    account = gw.fake.households[0].account_id
    async with gw.client("tenant_a") as tenant:
        answer = await tenant.get(f"/v1/me/accounts/{account}/statements/{month}")
    assert answer.status_code == 422, answer.text


async def test_the_collection_rate_needs_a_month_and_says_so(gw: Harness) -> None:
    async with gw.client("admin") as admin:
        document = (await admin.get("/openapi.json")).json()
        without = await admin.get("/v1/reports/collection-rate")
        wrong = await admin.get("/v1/reports/collection-rate", params={"month": "2026-13"})
    parameters = {p["name"]: p for p in document["paths"]["/v1/reports/collection-rate"]["get"]["parameters"]}
    assert parameters["month"]["required"] is True
    assert (without.status_code, wrong.status_code) == (422, 422), without.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/leases/L1/move-out", {"move_out": 0}),  # lax validation read 0 as 1970-01-01
        ("PUT", "/v1/floors/F1", {"building_id": "B1", "level": "1"}),
        ("PUT", "/v1/estates/E1/policy", {"weekends": 0}),
        ("PUT", "/v1/estates/E1/policy", {"nights_start": "22:00:00+08:00", "nights_end": "07:00:00"}),
        ("PUT", "/v1/tariffs/electricity", {"unit_price": "0.5883", "effective_from": 1798732800}),
    ],
)
async def test_a_body_the_openapi_does_not_admit_is_refused(
    gw: Harness, method: str, path: str, body: dict[str, object]
) -> None:
    async with gw.client("admin") as admin:
        answer = await admin.request(method, path, json=body)
    assert answer.status_code == 422, answer.text
