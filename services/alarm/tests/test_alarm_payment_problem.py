"""Billing's payment problems reach staff: a `PaymentProblem` through the real broker raises one major
`payment_problem` alarm per provider and kind, in the payer's estate, and a redelivery or the next problem of
the same kind updates that alarm instead of opening another."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_alarm.app import create_app
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.notify.templates import TYPE_NAMES
from shuidian_alarm.domain.payment_events import PAYMENT_PROBLEM, on_payment_problem
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_shared import topics
from shuidian_shared.contracts.payments import PaymentProblem, PaymentProblemKind
from shuidian_shared.messages import AlarmSeverity


def problem(provider: str, kind: PaymentProblemKind, **extra: Any) -> PaymentProblem:
    return PaymentProblem(
        source="billing-test", provider=provider, kind=kind, subject=f"{provider}:4200{uuid.uuid4().hex[:8]}", **extra
    )


@pytest.mark.parametrize("kind", list(PaymentProblemKind))
def test_every_kind_raises_a_major_alarm_per_provider_and_kind_in_the_payers_estate(kind: PaymentProblemKind) -> None:
    event = problem("wechat", kind, review_id=7, amount=Decimal("50.00"), estate_id="E-9", account_id="A-1")
    [decision] = on_payment_problem(event)
    assert isinstance(decision, Raise)
    assert (decision.source_id, decision.alarm_type) == (f"payments:wechat:{kind.value}", PAYMENT_PROBLEM)
    assert decision.severity is AlarmSeverity.MAJOR
    assert decision.placement is not None
    assert decision.placement.estate == "E-9"
    assert decision.details["review_id"] == "7"
    assert "支付异常" in decision.message_zh
    assert "50.00" in decision.message_en
    assert TYPE_NAMES[PAYMENT_PROBLEM] == ("支付异常", "Payment problem")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"payments-{port}",
        http_port=port,
        tick_seconds=0.2,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


@pytest.mark.integration
async def test_a_payment_problem_from_billing_raises_one_alarm_that_estate_staff_see(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    provider, estate = f"p{uuid.uuid4().hex[:6]}", f"Estate-{uuid.uuid4().hex[:6]}"
    first = problem(
        provider, PaymentProblemKind.AMOUNT_MISMATCH, review_id=1, amount=Decimal("49.00"), estate_id=estate
    )
    second = problem(
        provider, PaymentProblemKind.AMOUNT_MISMATCH, review_id=2, amount=Decimal("9.90"), estate_id=estate
    )
    source = f"payments:{provider}:amount_mismatch"
    # The first twice (a redelivery), then a second mismatch of the same provider.
    await publish(mqtt_url, *((topics.payment_problems(provider), m) for m in (first, first, second)))

    async def three_seen() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"source_id": source})).json()
        return found if found and found[0]["occurrences"] >= 3 else None

    [alarm] = await eventually(three_seen, "the payment_problem alarm")
    assert (alarm["alarm_type"], alarm["severity"], alarm["state"]) == (PAYMENT_PROBLEM, "major", "active")
    assert alarm["estate"] == estate
    assert alarm["details"]["review_id"] == "2"
    forged = problem(provider, PaymentProblemKind.FORGED_NOTIFICATIONS)
    await publish(mqtt_url, (topics.payment_problems(provider), forged))

    async def other_kind() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (
            await api.get("/v1/alarms", params={"source_id": f"payments:{provider}:forged_notifications"})
        ).json()
        return found or None

    [other] = await eventually(other_kind, "the forged-notifications alarm")
    assert other["alarm_type"] == PAYMENT_PROBLEM
