"""Line loss on real PostgreSQL and a real broker, from the simulator's ground truth: five households'
meters follow the simulator's consumption model, the master meter measures their true sum plus a 3 %
technical loss. A normal day stays under the threshold; a day when one household bypasses its meter
(its register sees 30 % of what it uses) is caught and published once as `LineLossExceeded`; a day with
a silent sub-meter is not judged at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from shuidian_devstack.infra import free_port, serve_ready
from shuidian_devstack.pytest_plugin import eventually, publish
from shuidian_insights.app import create_app
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.contracts.insights import LineLossExceeded
from shuidian_shared.messages import Reading, ReadingBatch, Utility
from shuidian_simulator.domain.consumption import ConsumptionModel
from shuidian_simulator.estate import Profile

pytestmark = pytest.mark.integration
TZ = ZoneInfo("Asia/Shanghai")
REGISTER = "energy_active_import_total"
SEED = 2026


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def insights(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    settings = InsightsSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"loss-{port}",
        http_port=port,
        billing_url="http://127.0.0.1:9",
        job_interval_seconds=3600,
    )
    async with serve_ready(create_app(settings), port) as client:
        yield client


def readings(tag: str, first: date, days: int) -> tuple[str, list[str], list[ReadingBatch]]:
    """Hourly samples; day 2 (index 1) has sub-meter 0 bypassed, day 3 has sub-meter 1 silent."""
    subs = [f"{tag}-S{i}" for i in range(5)]
    master = f"{tag}-MASTER"
    models = {s: ConsumptionModel(SEED, s, "electricity", Profile.RESIDENTIAL) for s in subs}
    registers = {m: Decimal(100) for m in [*subs, master]}
    start = datetime.combine(first, datetime.min.time(), TZ).astimezone(UTC)
    batches = [[Reading.create(m, Utility.ELECTRICITY, start, registers={REGISTER: v}) for m, v in registers.items()]]
    for index in range(days * 24):
        at = start + timedelta(hours=index + 1)
        day = index // 24
        hour_index = int((at - timedelta(hours=1)).timestamp()) // 3600
        true_sum = Decimal(0)
        for sub, model in models.items():
            truth = model.rate(hour_index)
            true_sum += truth
            seen = truth * Decimal("0.3") if (day == 1 and sub == subs[0]) else truth
            registers[sub] += seen
        registers[master] += true_sum * Decimal("1.03")
        batch = []
        for meter, value in registers.items():
            if day == 2 and meter == subs[1]:
                continue  # silent all day
            batch.append(Reading.create(meter, Utility.ELECTRICITY, at, registers={REGISTER: value}))
        batches.append(batch)
    return (
        master,
        subs,
        [ReadingBatch(source="collector-test", gateway_id=f"GW-{tag}", readings=tuple(b)) for b in batches],
    )


async def test_a_bypassed_meter_is_caught_once(insights: httpx.AsyncClient, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    first = datetime.now(TZ).date() - timedelta(days=4)
    master, subs, batches = readings(tag, first, days=3)
    group = f"G-{tag}"
    put = await insights.put(
        f"/v1/line-loss/groups/{group}",
        json={
            "master_meter_id": master,
            "sub_meter_ids": subs,
            "threshold_pct": "8",
            "min_completeness_pct": "100",
            "estate_id": f"Estate-{tag}",
        },
    )
    assert put.status_code == 204
    address = BrokerAddress.parse(mqtt_url)
    received: list[LineLossExceeded] = []
    async with aiomqtt.Client(address.host, address.port) as listener:
        await listener.subscribe(topics.ALL_LINE_LOSS, qos=1)

        async def listen() -> None:
            async for message in listener.messages:
                event = LineLossExceeded.model_validate_json(bytes(message.payload))
                if event.group_id == group:
                    received.append(event)

        task = asyncio.create_task(listen())
        try:
            await publish(mqtt_url, *[(topics.readings(b.gateway_id), b) for b in batches])

            async def archived() -> bool:
                end = datetime.combine(first + timedelta(days=3), datetime.min.time(), TZ)
                response = await insights.get(
                    "/v1/readings/history",
                    params={
                        "meter_id": master,
                        "start": (end - timedelta(hours=1)).isoformat(),
                        "end": (end + timedelta(seconds=1)).isoformat(),
                    },
                )
                return response.status_code == 200 and len(response.json()["raw"]) == 2

            await eventually(archived, "the last samples archived", timeout=60)
            for _ in range(2):  # the second run changes nothing and publishes nothing again
                # The first pass derives INSIGHTS_BACKFILL_DAYS (62) days and creates their partitions: longer
                # than the client's default timeout on a busy machine.
                started = time.monotonic()
                assert (await insights.post("/v1/jobs/nightly/run", timeout=120)).status_code == 200
                print(f"nightly pass {time.monotonic() - started:.1f} s")
                await insights.post("/v1/jobs/nightly/run", timeout=120)
            days = (
                await insights.get(
                    f"/v1/line-loss/groups/{group}/days",
                    params={"start": first.isoformat(), "end": (first + timedelta(days=2)).isoformat()},
                )
            ).json()
            by_day = {d["day"]: d for d in days}
            normal, bypassed, silent = (by_day[(first + timedelta(days=i)).isoformat()] for i in range(3))
            assert normal["judged"]
            assert not normal["exceeded"]
            assert Decimal("2.5") < Decimal(normal["loss_pct"]) < Decimal("3.5")
            assert bypassed["judged"]
            assert bypassed["exceeded"]
            assert Decimal(bypassed["loss_pct"]) > Decimal(8)
            assert not silent["judged"]
            assert silent["loss_pct"] is None
            assert Decimal(silent["completeness_pct"]) < 100

            async def published() -> list[LineLossExceeded]:
                return received

            events = await eventually(published, "the line-loss event", timeout=30)
            await asyncio.sleep(1)
            assert len(events) == 1
            assert events[0].day == first + timedelta(days=1)
            assert events[0].estate_id == f"Estate-{tag}"  # alarm lands it in the group's estate
        finally:
            task.cancel()
