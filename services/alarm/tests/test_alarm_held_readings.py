"""Billing's held readings reach staff: a `ReadingHeld` through the real broker raises one `reading_held` warning
per meter (or `unknown_meter` for a meter nobody pays for), and a redelivery or the next held reading updates it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_alarm.app import create_app
from shuidian_alarm.domain.decisions import Raise
from shuidian_alarm.domain.held_readings import READING_HELD, UNKNOWN_METER, on_reading_held
from shuidian_alarm.domain.notify.templates import TYPE_NAMES
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_shared import topics
from shuidian_shared.messages import AlarmSeverity, ReadingHeld

AT = datetime(2026, 11, 3, 8, 15, tzinfo=UTC)


def held(meter_id: str, reason: str, value: str = "1234.56", **extra: Any) -> ReadingHeld:
    return ReadingHeld(
        source="billing-test",
        meter_id=meter_id,
        reading_id=uuid.uuid4(),
        register_name="energy_active_import_total",
        value=Decimal(value),
        sampled_at=AT,
        reason=reason,
        **extra,
    )


@pytest.mark.parametrize("reason", ["implausible_jump", "register_decreased", "out_of_range"])
def test_a_held_reading_is_a_warning_on_its_meter(reason: str) -> None:
    [decision] = on_reading_held(held("E-1", reason, watermark_value=Decimal("1000.00")))
    assert isinstance(decision, Raise)
    assert (decision.source_id, decision.alarm_type, decision.severity) == ("E-1", READING_HELD, AlarmSeverity.WARNING)
    assert decision.placement is None  # looked up: where the meter is described
    assert decision.details["reason"] == reason
    assert decision.details["watermark_value"] == "1000.00"
    assert "1000.00" in decision.message_zh
    assert "暂停计费" in decision.message_zh


def test_an_unknown_meter_is_its_own_alarm_type() -> None:
    [decision] = on_reading_held(held("X-9", "unknown_meter"))
    assert isinstance(decision, Raise)
    assert (decision.source_id, decision.alarm_type) == ("X-9", UNKNOWN_METER)
    assert "未登记表计" in decision.message_zh
    assert "not billed" in decision.message_en
    assert TYPE_NAMES[UNKNOWN_METER] == ("未登记表计", "Unknown meter")
    assert TYPE_NAMES[READING_HELD] == ("读数待审", "Reading held for review")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"held-{port}",
        http_port=port,
        tick_seconds=0.2,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


@pytest.mark.integration
async def test_held_readings_from_billing_raise_one_alarm_per_meter_and_kind(
    api: httpx.AsyncClient, mqtt_url: str
) -> None:
    meter, stranger = f"E-{uuid.uuid4().hex[:8]}", f"X-{uuid.uuid4().hex[:8]}"
    first, second = held(meter, "implausible_jump"), held(meter, "register_decreased", value="1200.00")
    unknown = held(stranger, "unknown_meter")
    # The first twice (a redelivery), then another held reading of the same meter, and an unknown meter.
    await publish(mqtt_url, *((topics.reading_held(m.meter_id), m) for m in (first, first, second, unknown)))

    async def found(source: str, occurrences: int) -> list[dict[str, Any]] | None:
        alarms: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"source_id": source})).json()
        return alarms if alarms and alarms[0]["occurrences"] >= occurrences else None

    [alarm] = await eventually(lambda: found(meter, 3), "the reading_held alarm")
    assert (alarm["alarm_type"], alarm["severity"], alarm["state"]) == (READING_HELD, "warning", "active")
    assert alarm["details"]["reason"] == "register_decreased"
    [other] = await eventually(lambda: found(stranger, 1), "the unknown_meter alarm")
    assert other["alarm_type"] == UNKNOWN_METER
