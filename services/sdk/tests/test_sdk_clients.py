"""The SDK against a running gateway (real socket, fake backends): sign-in and transparent refresh,
tenant reads, idempotent top-ups, typed errors, paging, ETags, API keys; sync and async alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio

from shuidian_gateway.domain import security
from shuidian_gateway.testing import PASSWORD, Harness, gateway_harness
from shuidian_sdk import (
    AsyncShuidianClient,
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ShuidianClient,
    verify_signature,
)
from shuidian_sdk.models import NotificationSettings, Tokens

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(database_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with gateway_harness(database_url, mqtt_url) as harness:
        yield harness


async def test_tenant_journey_async(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url) as client:
        await client.login(gw.username("tenant_a"), PASSWORD)
        me = await client.me()
        balance = await client.my_balance(me.accounts[0])
        meters = await client.my_meters()
        pdf = await client.my_statement_file("A-A", "2026-10")
        explained = await client.my_charge_explanation("A-A", "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
        usage = await client.my_usage("A-A", "hour", start=datetime(2026, 11, 1, tzinfo=UTC))
        order = await client.start_top_up("A-A", Decimal("30.00"), idempotency_key="sdk-async-topup-1")
        again = await client.start_top_up("A-A", Decimal("30.00"), idempotency_key="sdk-async-topup-1")
        status = await client.my_payment(order.order_id)
        alarms = [a async for a in client.iterate("/v1/me/alarms", limit=1)]
        with pytest.raises(NotFound):
            await client.my_balance("A-B")
        with pytest.raises(Conflict):
            await client.start_top_up("A-A", Decimal("31.00"), idempotency_key="sdk-async-topup-1")
        with pytest.raises(PermissionDenied):
            await client.account("A-A")
    assert me.accounts == ["A-A"]
    assert balance.balance == Decimal("35.20")
    assert [m.meter_id for m in meters] == ["M-A"]
    assert pdf.startswith(b"%PDF")
    assert explained["entries"]
    assert usage["granularity"] == "hour"
    assert again == order
    assert status.status == "open"
    assert {a["source_id"] for a in alarms} == {"A-A", "M-A"}  # one per page, all pages walked


async def test_expired_access_token_is_refreshed_transparently(gw: Harness) -> None:
    pair = (await gw.login("tenant_b")).json()
    expired = security.encode_access_token(
        gw.settings.jwt_secret.get_secret_value(),
        gw.settings.jwt_issuer,
        user_id=gw.user_ids["tenant_b"],
        role="tenant",
        estates=(),
        tenant_id="T-B",
        now=datetime.now(UTC) - timedelta(hours=1),
        ttl=timedelta(minutes=15),
    )
    tokens = Tokens(access_token=expired, refresh_token=pair["refresh_token"], expires_in=900)
    async with AsyncShuidianClient(gw.url, tokens=tokens) as client:
        assert (await client.me()).tenant_id == "T-B"
        assert client.tokens is not None
        assert client.tokens.refresh_token != pair["refresh_token"]  # rotated and kept
        await client.logout()
        with pytest.raises(AuthenticationError):
            await client.me()


def _sync_journey(url: str, username: str, api_key: str) -> dict[str, object]:
    with ShuidianClient(url) as staff:
        staff.login(username, PASSWORD)
        account = staff.account("A-A")
        paid = staff.counter_top_up("A-A", Decimal("20.00"), idempotency_key="sdk-sync-counter-1")
        replay = staff.counter_top_up("A-A", Decimal("20.00"), idempotency_key="sdk-sync-counter-1")
        command = staff.issue_command("M-A", "direct_close", "paid at the counter")
        rooms = list(staff.iterate("/v1/rooms"))
        try:
            staff.counter_top_up("A-A", Decimal("1.001"))
            invalid = False
        except InvalidRequest:
            invalid = True
    with ShuidianClient(url, api_key=api_key) as integrator:
        integrator_balance = integrator.account("A-B").value.balance
    return {
        "account": account,
        "paid": paid,
        "replay": replay,
        "command": command,
        "rooms": rooms,
        "invalid": invalid,
        "integrator_balance": integrator_balance,
    }


async def test_staff_and_integrator_journey_sync(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url) as admin:
        await admin.login(gw.username("admin"), PASSWORD)
        key = await admin.create_api_key("sdk test", ["accounts:read"])
    assert key.key is not None
    # The blocking client runs in a worker thread: the gateway serves from this event loop.
    result = await asyncio.to_thread(_sync_journey, gw.url, gw.username("admin"), key.key)
    assert result["account"].etag.startswith('W/"')  # type: ignore[attr-defined]
    assert result["paid"] == result["replay"]
    assert result["command"].command_id  # type: ignore[attr-defined]
    assert {r["room_id"] for r in result["rooms"]} == {"R-A", "R-B"}  # type: ignore[attr-defined]
    assert result["invalid"] is True
    assert result["integrator_balance"] == Decimal("35.20")
    async with AsyncShuidianClient(gw.url) as admin:
        await admin.login(gw.username("admin"), PASSWORD)
        await admin.revoke_api_key(key.key_id)
    async with AsyncShuidianClient(gw.url, api_key=key.key) as revoked:
        with pytest.raises(AuthenticationError):
            await revoked.account("A-A")


async def test_etags_round_trip(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url) as client:
        await client.login(gw.username("tenant_a"), PASSWORD)
        current = await client.notification_settings()
        changed = await client.set_notification_settings(NotificationSettings(channels=["sms"]), etag=current.etag)
        with pytest.raises(PreconditionFailed):
            await client.set_notification_settings(NotificationSettings(channels=["email"]), etag=current.etag)
    assert changed.value.channels == ["sms"]
    assert changed.etag != current.etag


async def test_ids_cannot_escape_their_path_segment(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url) as client:
        await client.login(gw.username("tenant_a"), PASSWORD)
        for hostile in ("../A-B", "A-B/../../v1/users", "A-A?x=1", "%2e%2e"):
            with pytest.raises((NotFound, InvalidRequest)):
                await client.my_balance(hostile)


def test_sdk_and_gateway_agree_on_webhook_signatures() -> None:
    body = b'{"event":"alarm"}'
    now = int(time.time())
    header = security.sign_webhook("whsec_test", now, body)
    assert verify_signature("whsec_test", header, body, now=now)
    assert not verify_signature("whsec_other", header, body, now=now)
    assert not verify_signature("whsec_test", header, body, now=now + 301)
    assert not verify_signature("whsec_test", "garbage", body, now=now)


async def test_a_wrong_password_is_an_invalid_request(gw: Harness) -> None:
    async with AsyncShuidianClient(gw.url, transport=httpx.AsyncHTTPTransport(retries=0)) as client:
        with pytest.raises(InvalidRequest) as err:
            await client.login(gw.username("tenant_a"), "not the password")
    assert err.value.code == "invalid_grant"
