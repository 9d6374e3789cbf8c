"""The gateway in front of the real billing service (real PostgreSQL): staff account routes,
ETags on billing's representation, an idempotent counter top-up, the paged ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_billing.app import create_app as billing_app
from shuidian_billing.settings import BillingSettings
from shuidian_gateway.testing import Harness, free_port, gateway_harness, serve

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    port = free_port()
    billing = billing_app(
        BillingSettings(
            environment="test",
            database_url=SecretStr(database_url),
            mqtt_url=mqtt_url,
            instance_id=f"billing-gw-test-{port}",
            mqtt_clean_session=True,
            http_port=port,
        )
    )
    async with (
        serve(billing, port),
        gateway_harness(database_url, mqtt_url, billing_url=f"http://127.0.0.1:{port}") as h,
    ):
        yield h


async def test_accounts_top_ups_and_ledger_through_real_billing(gw: Harness) -> None:
    account = f"GW-{gw.suffix}"
    async with gw.client("admin") as admin:
        created = await admin.put(f"/v1/accounts/{account}", json={"name": "1-101"})
        assert created.status_code == 204
        read = await admin.get(f"/v1/accounts/{account}")
        assert read.json()["balance"] == "0.00"
        etag = read.headers["etag"]
        key = f"gw-real-{gw.suffix}"
        paid = await admin.post(
            f"/v1/accounts/{account}/topups", json={"amount": "12.50"}, headers={"Idempotency-Key": key}
        )
        again = await admin.post(
            f"/v1/accounts/{account}/topups", json={"amount": "12.50"}, headers={"Idempotency-Key": key}
        )
        after = await admin.get(f"/v1/accounts/{account}")
        stale = await admin.put(f"/v1/accounts/{account}", json={"name": "x"}, headers={"If-Match": etag})
        ledger = (await admin.get(f"/v1/accounts/{account}/ledger", params={"limit": 1})).json()
        missing = await admin.get("/v1/accounts/NO-SUCH-ACCOUNT")
    assert paid.status_code == 201
    assert again.json() == paid.json()
    assert Decimal(after.json()["balance"]) == Decimal("12.50")  # credited once
    assert after.headers["etag"] != etag
    assert stale.status_code == 412
    assert len(ledger["items"]) == 1
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_tenant_scope_comes_from_billing(gw: Harness) -> None:
    """Until billing serves tenant scopes, tenants get a clear 501 rather than someone else's data."""
    async with gw.client("tenant_a") as tenant:
        response = await tenant.get("/v1/me")
    assert response.status_code in (200, 501)
    if response.status_code == 200:
        assert response.json()["tenant_id"] == "T-A"
    else:
        assert response.json()["code"] == "not_implemented"
