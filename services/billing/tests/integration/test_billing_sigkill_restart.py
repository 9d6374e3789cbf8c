"""Billing killed with SIGKILL in the middle of a reading stream and restarted: every balance equals
that of an uninterrupted run, to the cent (real process, real broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomqtt
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.infra import free_port
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import BrokerAddress, MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility

pytestmark = pytest.mark.integration
METERS = 30
CYCLES = 60
PER_BATCH = 15
ERA = datetime(2019, 3, 4, tzinfo=UTC)  # a past era with this test's own tariff, so every hour gets posted
PRICE = Decimal("0.517")


def stream(prefix: str) -> list[ReadingBatch]:
    """CYCLES readings a minute apart for each meter, in batches of PER_BATCH (one gateway per group)."""
    batches = []
    for cycle in range(CYCLES):
        for group in range(0, METERS, PER_BATCH):
            readings = tuple(
                Reading.create(
                    f"{prefix}-M{m}",
                    Utility.ELECTRICITY,
                    ERA + timedelta(minutes=cycle),
                    registers={"energy_active_import_total": Decimal(100 + m) + Decimal(cycle * (m + 1)) / 100},
                )
                for m in range(group, group + PER_BATCH)
            )
            batches.append(ReadingBatch(source="test", gateway_id=f"{prefix}-g{group}", readings=readings))
    return batches


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await probe():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@asynccontextmanager
async def billing_process(
    database_url: str, mqtt_url: str, instance: str, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_URL": mqtt_url,
        "BILLING_ENVIRONMENT": "test",
        "BILLING_INSTANCE_ID": instance,
        "BILLING_MQTT_CLEAN_SESSION": "false",  # the broker keeps what arrives while the process is dead
        "BILLING_HTTP_PORT": str(port),
        "BILLING_FLUSH_INTERVAL_SECONDS": "0.5",
        "BILLING_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "shuidian_billing", env=env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=infra.service_auth("billing")) as client:

            async def ready() -> bool:
                if process.returncode is not None:
                    pytest.fail(f"billing exited with {process.returncode}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, "billing to be ready")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def discard_session(mqtt_url: str, instance: str) -> None:
    """Drop the broker's persistent session of a test instance: left behind in the `$share/billing`
    group it would take its share of every later run's readings and never bill them."""
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"billing-{instance}", clean_session=True):
        pass


async def publish(mqtt_url: str, batches: list[ReadingBatch], pace: float = 0.0) -> None:
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(address.host, address.port) as client:
        for batch in batches:
            await client.publish(topics.readings(batch.gateway_id), batch.model_dump_json().encode(), qos=1)
            await asyncio.sleep(pace)


async def household_balances(engine: AsyncEngine, prefix: str) -> dict[int, Decimal]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT ledger_account, balance FROM billing.balances WHERE ledger_account LIKE :p"),
            {"p": f"household:{prefix}-A%"},
        )
        return {int(r.ledger_account.rsplit("A", 1)[1]): r.balance for r in rows}


async def test_sigkill_mid_stream_then_restart_bills_like_an_uninterrupted_run(
    database_url: str, mqtt_url: str
) -> None:
    engine = await migrated_engine(database_url, "shuidian_billing", "billing")
    tag = uuid.uuid4().hex[:6]
    killed, clean = f"K{tag}", f"C{tag}"
    outbox = Outbox(engine, MqttLink("mqtt://127.0.0.1:1", service="billing", instance="k"), "billing")
    reference = Billing.build(engine, outbox, BillingSettings(environment="test"), "billing-reference")
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO billing.tariffs (utility, unit_price, effective_from) VALUES ('electricity', :p, :e)"),
            {"p": PRICE, "e": ERA - timedelta(days=1)},
        )
    for prefix in (killed, clean):
        for m in range(METERS):
            await reference.accounts.put_account(
                f"{prefix}-A{m}", "kill test", Decimal("20"), Decimal("5"), Decimal("0")
            )
            await reference.accounts.bind_meter(f"{prefix}-M{m}", f"{prefix}-A{m}", Utility.ELECTRICITY)
            await reference.credits.top_up(f"{prefix}-A{m}", Decimal("30.00"), "cash", None, f"{prefix}-open-{m}")

    # The uninterrupted run, in this process.
    for batch in stream(clean):
        await reference.readings.on_readings(batch, "")

    async def progress() -> int:
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        text("SELECT count(*) FROM billing.watermarks WHERE meter_id LIKE :p AND sampled_at >= :t"),
                        {"p": f"{killed}-M%", "t": ERA + timedelta(minutes=10)},
                    )
                ).scalar_one()
            )

    batches = stream(killed)
    half = len(batches) // 2
    instance, port = f"kill-{tag}", free_port()
    try:
        async with billing_process(database_url, mqtt_url, instance, port) as first:
            publisher = asyncio.create_task(publish(mqtt_url, batches[:half], pace=0.02))

            async def some_billed() -> bool:
                return await progress() > 0

            await eventually(some_billed, "the first readings billed")
            first.send_signal(signal.SIGKILL)  # mid-stream: the publisher is still sending
            assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
            assert not publisher.done(), "the stream finished before the kill; make it longer"
            await publisher
        async with billing_process(database_url, mqtt_url, instance, port):
            await publish(mqtt_url, batches[half:])

            async def all_billed() -> bool:
                async with engine.connect() as conn:
                    done = (
                        await conn.execute(
                            text("SELECT count(*) FROM billing.watermarks WHERE meter_id LIKE :p AND sampled_at = :t"),
                            {"p": f"{killed}-M%", "t": ERA + timedelta(minutes=CYCLES - 1)},
                        )
                    ).scalar_one()
                    pending = (
                        await conn.execute(
                            text("SELECT count(*) FROM billing.accruals WHERE meter_id LIKE :p OR meter_id LIKE :q"),
                            {"p": f"{killed}-M%", "q": f"{clean}-M%"},
                        )
                    ).scalar_one()
                return bool(done == METERS and pending == 0)

            await eventually(all_billed, "the rest of the stream billed and every hour posted")
    finally:
        await discard_session(mqtt_url, instance)
    killed_balances = await household_balances(engine, killed)
    clean_balances = await household_balances(engine, clean)
    assert killed_balances == clean_balances
    for m in range(METERS):
        exact = Decimal(CYCLES - 1) * (m + 1) / 100 * PRICE
        posted = Decimal("30.00") - killed_balances[m]
        assert posted <= exact < posted + Decimal("0.01")
        for prefix in (killed, clean):
            assert (await reference.accounts.account(f"{prefix}-A{m}"))["available"] == Decimal("30.00") - exact
    await engine.dispose()
