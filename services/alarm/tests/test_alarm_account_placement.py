"""An alarm raised for a household's account is placed in the estate and room of its lease, as billing's retained
`RoomOccupancy` says — whether the occupancy arrives before the alarm or after it (billing announces a new
account's balance as soon as the lease creates it), and with no alarm target naming the account."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_alarm.app import create_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel, RoomOccupancy

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"placement-{port}",
        http_port=port,
        tick_seconds=0.2,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


def occupancy(room: str, estate: str, account: str, tenant: str) -> RoomOccupancy:
    return RoomOccupancy(
        source="billing-test",
        room_id=room,
        estate_id=estate,
        leased=True,
        since=datetime(2026, 6, 1, tzinfo=UTC),
        lease_id=f"L-{room}",
        account_id=account,
        tenant_id=tenant,
        meters=(),
    )


class Announcer:
    """Billing's balance events for one account. Alarm takes them through a shared subscription, which other alarm
    instances on the same broker (other test runs) may share: each call announces again with a higher sequence,
    so a probe that announces reaches this alarm within a round of the group."""

    def __init__(self, mqtt_url: str, account: str) -> None:
        self.mqtt_url, self.account, self.sequence = mqtt_url, account, 0

    async def exhausted(self) -> None:
        self.sequence += 1
        event = BalanceEvent(
            source="billing-test",
            account_id=self.account,
            kind=BalanceEventKind.EXHAUSTED,
            level=BalanceLevel.EXHAUSTED,
            balance=Decimal("-0.50"),
            sequence=self.sequence,
            meters=(),
        )
        await publish(self.mqtt_url, (topics.balance(self.account), event))


async def placed(api: httpx.AsyncClient, account: str, estate: str, announce: Announcer | None) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        if announce is not None:
            await announce.exhausted()
        found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"estate": estate})).json()
        return next((a for a in found if a["source_id"] == account), None)

    alarm: dict[str, Any] = await eventually(probe, f"the alarm of {account} in {estate}", interval=0.5)
    return alarm


@pytest.mark.parametrize("occupancy_first", [True, False], ids=["occupancy-first", "alarm-first"])
async def test_an_account_alarm_is_placed_in_the_estate_of_its_lease(
    api: httpx.AsyncClient, database_url: str, mqtt_url: str, occupancy_first: bool
) -> None:
    tag = uuid.uuid4().hex[:8]
    room, estate, account, tenant = f"R-{tag}", f"E-{tag}", f"A-{tag}", f"T-{tag}"
    lease = occupancy(room, estate, account, tenant)
    announce = Announcer(mqtt_url, account)
    try:
        if occupancy_first:
            await publish(mqtt_url, (topics.room_occupancy(room), lease), retain=True)

            async def taken_in() -> bool | None:
                conn = await asyncpg.connect(database_url)
                try:
                    row = await conn.fetchrow("SELECT 1 FROM alarm.room_occupancy WHERE room_id = $1", room)
                finally:
                    await conn.close()
                return True if row is not None else None

            await eventually(taken_in, "the occupancy taken in")
            alarm = await placed(api, account, estate, announce)
        else:

            async def raised() -> bool | None:
                await announce.exhausted()
                found: list[dict[str, Any]] = (await api.get("/v1/alarms", params={"source_id": account})).json()
                return True if found else None

            await eventually(raised, "the unplaced alarm", interval=0.5)
            await publish(mqtt_url, (topics.room_occupancy(room), lease), retain=True)
            alarm = await placed(api, account, estate, None)  # placed by the occupancy alone
    finally:
        await publish(mqtt_url, (topics.room_occupancy(room), b""), retain=True)  # clear it
    assert (alarm["estate"], alarm["room"], alarm["tenant_id"]) == (estate, room, tenant)
