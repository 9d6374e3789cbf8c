"""One-time data steps run once: the start-up push of the notification settings the gateway kept before alarm owned
them is recorded in `gateway.data_steps` when done, and a start that finds the record does no work — it reads
nothing of the old table and calls no service. Real PostgreSQL (a database of its own), the gateway on a real
socket with its fake backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack.pytest_plugin import eventually, private_database
from shuidian_gateway.adapters.upstream import Upstreams
from shuidian_gateway.api.routes_me import SETTINGS_TO_ALARM, push_saved_settings_once
from shuidian_gateway.testing import Harness, gateway_harness

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def gw(pg_server_url: str, mqtt_url: str) -> AsyncIterator[Harness]:
    async with private_database(pg_server_url, "gw_steps") as url, gateway_harness(url, mqtt_url) as harness:
        yield harness


class NoCalls:
    """Upstreams that fail the test on any call: a recorded step must not reach a service."""

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"a recorded step called a service: {args}")


async def recorded(engine: AsyncEngine) -> list[tuple[str, int, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT name, version, outcome FROM gateway.data_steps ORDER BY name, version"))
        return [(row.name, row.version, row.outcome) for row in rows]


async def test_the_start_records_the_push_and_a_recorded_step_does_no_work(gw: Harness) -> None:
    engine: AsyncEngine = gw.app.state.container.runtime.engine
    step = (SETTINGS_TO_ALARM.name, SETTINGS_TO_ALARM.version)

    async def step_recorded() -> list[tuple[str, int, str]]:
        return [row for row in await recorded(engine) if row[:2] == step]

    # The gateway's start ran the step on an empty old table and recorded it.
    assert await eventually(step_recorded, "the start-up push recorded as done") == [(*step, "0 pushed")]

    # A row left in the old table now is not looked at by a start that finds the record.
    old = {"low_balance": False, "alarms": True, "statements": False, "channels": ["app"], "quiet_hours": None}
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO gateway.notification_settings (tenant_id, settings) VALUES ('T-A', CAST(:s AS jsonb))"),
            {"s": json.dumps(old)},
        )
    await push_saved_settings_once(engine, cast(Upstreams, NoCalls()))
    assert "T-A" not in gw.fake.notification_settings

    # Without the record (a new version of the step, say) it runs: the row reaches alarm and the step is recorded.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM gateway.data_steps"))
    await push_saved_settings_once(engine, gw.app.state.container.upstreams, retry_seconds=0.01)
    assert gw.fake.notification_settings["T-A"]["low_balance"] is False
    assert gw.fake.notification_settings["T-A"]["version"] == 1
    assert await recorded(engine) == [(*step, "1 pushed")]
