"""PollStats against the DL/T 645 simulator over real sockets: per meter the poll requests that went on the wire
(retries included), the ones that got no valid answer and why — a healthy meter, one that times out 30 % of the
time, one that answers only line noise, one whose replies have bad checksums — counted against the simulator's own
wire log; one message per window through the local store, empty windows skipped, and `gateway_down` while the
gateway's link is down."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.poller import GatewayPoller, PollPolicy
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.app import create_app, drivers
from shuidian_collector.domain.devices import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import service_auth
from shuidian_devstack.pytest_plugin import migrated_engine
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import PollStats, Utility
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.integration
WINDOW = 0.5


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_collector", "collector")
    yield engine
    await engine.dispose()


def estate(tag: str, faults: list[list[dict[str, Any]]]) -> Estate:
    return Estate.model_validate(
        {
            "seed": 7,
            "gateways": [
                {
                    "id": f"gw-{tag}",
                    "buses": [
                        {
                            "id": f"bus-{tag}",
                            "protocol": "dlt645",
                            "baud": 19200,
                            "reply_delay_ms": 5,
                            "meters": [
                                {"id": f"m-{tag}-{n}", "address": f"{n + 1:012d}", "faults": meter_faults}
                                for n, meter_faults in enumerate(faults)
                            ],
                        }
                    ],
                }
            ],
        }
    )


async def make_poller(sim: Simulator, engine: AsyncEngine, store: LocalStore, *, retries: int = 1) -> GatewayPoller:
    (gateway,) = sim.estate.gateways
    (bus,) = gateway.buses
    config = GatewayConfig(
        gateway.id,
        (
            BusConfig(
                bus.id,
                gateway.id,
                *sim.bus_endpoint(bus.id),
                BusProtocol.DLT645,
                bus.baud,
                150,
                retries,
                tuple(MeterConfig(m.id, m.address, "dlt645-generic", Utility.ELECTRICITY, 60) for m in bus.meters),
            ),
        ),
    )
    policy = PollPolicy(gateway_backoff_initial=0.1, gateway_backoff_max=0.2, stats_window=WINDOW)
    return GatewayPoller(
        config, drivers(CollectorSettings(environment="test")), store, DeviceStates(engine, "t"), "t", policy
    )


async def published(store: LocalStore, gateway_id: str) -> list[PollStats]:
    return [
        PollStats.model_validate(json.loads(p.payload))
        for p in await store.peek(10_000)
        if p.topic == topics.poll_stats(gateway_id)
    ]


def wire_outcomes(sim: Simulator, bus_id: str) -> dict[str, Counter[str]]:
    """Per meter address: requests on the wire, and those the meter answered with a well-formed frame."""
    log = sim.wire_log(bus_id)
    outcomes: dict[str, Counter[str]] = {}
    for i, (_, direction, frame) in enumerate(log):
        if direction != "rx":
            continue
        start = frame.index(0x68)  # after the FE preamble
        address = frame[start + 1 : start + 7][::-1].hex()
        counts = outcomes.setdefault(address, Counter())
        counts["requests"] += 1
        answered = i + 1 < len(log) and log[i + 1][1] == "tx"
        counts["answered" if answered else "silent"] += 1
    return outcomes


async def wait_for_window_end(poller: GatewayPoller) -> None:
    await asyncio.sleep(max((poller.tally.window_end - datetime.now(UTC)).total_seconds(), 0) + 0.01)


async def test_poll_stats_count_what_went_on_the_wire_by_kind(engine: AsyncEngine, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    faults = [
        [],
        [{"kind": "no_reply", "probability": "0.3"}],
        [{"kind": "noise", "probability": "1"}],
        [{"kind": "bad_checksum"}],
    ]
    async with (
        Simulator(estate(tag, faults)) as sim,
        LocalStore(tmp_path / "store.sqlite3", max_rows=1000) as store,
    ):
        poller = await make_poller(sim, engine, store)
        try:
            await wait_for_window_end(poller)
            poller.tally.roll(datetime.now(UTC), "x", "t")  # start from a fresh window
            for _ in range(12):
                # Every meter every cycle (a failing one is tried once per cycle, without retries); the statistics
                # are published as the poller's loop does, after every cycle once a window is over.
                await poller.poll(poller.meter_ids)
                await poller.publish_stats()
            await wait_for_window_end(poller)
            await poller.publish_stats()
            published_then = len(await published(store, f"gw-{tag}"))
            await wait_for_window_end(poller)
            await poller.publish_stats()  # a window without polls: nothing
            assert len(await published(store, f"gw-{tag}")) == published_then
        finally:
            for bus in poller.buses.values():
                await bus.link.close()
        wire = wire_outcomes(sim, f"bus-{tag}")
        stats = await published(store, f"gw-{tag}")

    assert len(stats) >= 2  # the cycles took several windows
    assert len({s.window_start for s in stats}) == len(stats)  # one message per window
    assert not any(s.gateway_down for s in stats)
    assert all(s.window_end - s.window_start == poller.tally.window for s in stats)
    totals: dict[str, Counter[str]] = {}
    for message in stats:
        for counts in message.meters:
            total = totals.setdefault(counts.meter_id, Counter())
            total["attempts"] += counts.attempts
            total["failures"] += counts.failures
            total.update({f"error:{k}": v for k, v in counts.errors.items()})
    healthy, flaky, noisy, corrupt = (totals[f"m-{tag}-{n}"] for n in range(4))
    for n, total in enumerate((healthy, flaky, noisy, corrupt)):
        on_wire = wire[f"{n + 1:012d}"]
        assert total["attempts"] == on_wire["requests"], (n, total, on_wire)
    assert healthy["failures"] == 0
    # The flaky meter: exactly its unanswered requests failed, as timeouts; roughly 30 % of them.
    flaky_wire = wire[f"{2:012d}"]
    assert flaky["failures"] == flaky["error:timeout"] == flaky_wire["silent"]
    assert 0 < flaky["failures"] < flaky["attempts"]
    # Every request of the noisy and the corrupt meter failed, each with its kind; retries are counted too.
    assert noisy["failures"] == noisy["error:malformed"] == noisy["attempts"] >= 12
    assert corrupt["failures"] == corrupt["error:checksum"] == corrupt["attempts"] >= 12
    assert noisy["attempts"] == 12 + 1  # the first cycle's retry, then one probe per cycle


async def test_a_gateway_that_is_down_is_reported_and_empty_windows_are_skipped(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    async with (
        Simulator(estate(tag, [[], []])) as sim,
        LocalStore(tmp_path / "store.sqlite3", max_rows=1000) as store,
    ):
        poller = await make_poller(sim, engine, store, retries=0)
        task = asyncio.create_task(poller.run())
        try:
            gateway = f"gw-{tag}"

            async def count() -> int:
                return len(await published(store, gateway))

            async def settle(n: int) -> None:
                async with asyncio.timeout(10):
                    while await count() < n:
                        await asyncio.sleep(0.05)

            # Healthy: the first window with polls is published, then nothing while no meter is due.
            await settle(1)
            await asyncio.sleep(WINDOW * 4)
            assert await count() == 1
            sim.set_gateway_online(gateway, False)
            for meter_id in poller.meter_ids:  # make them due now instead of in 60 s
                poller.schedule.restart(0.0, [meter_id])
            await settle(3)
            down = [s for s in await published(store, gateway) if s.gateway_down]
            assert down, "a window with the gateway down"
            assert any(c.errors.get("link") or c.errors.get("timeout") for s in down for c in s.meters)
            # While it stays down, each window says so, even without a probe in it.
            before = await count()
            await asyncio.sleep(WINDOW * 3)
            assert await count() >= before + 2
            assert all(s.gateway_down for s in (await published(store, gateway))[before:])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_service_publishes_poll_stats_on_the_broker(database_url: str, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    sim_estate = estate(tag, [[], [{"kind": "bad_checksum"}]])
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{tag}",
        mqtt_clean_session=True,
        registry_refresh_seconds=0.5,
        poll_stats_window_seconds=WINDOW,
    )
    address = BrokerAddress.parse(mqtt_url)
    async with (
        Simulator(sim_estate) as sim,
        aiomqtt.Client(address.host, address.port) as listener,
    ):
        await listener.subscribe(topics.ALL_POLL_STATS, qos=1)
        received: list[PollStats] = []

        async def listen() -> None:
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                stats = PollStats.model_validate_json(message.payload)
                if stats.gateway_id == f"gw-{tag}":
                    received.append(stats)

        listening = asyncio.create_task(listen())
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            (bus,) = sim.estate.gateways[0].buses
            host, port = sim.bus_endpoint(bus.id)
            lines = [
                "gateway_id,bus_id,host,port,protocol,baud,timeout_ms,retries,meter_id,address,model,utility,poll_interval_s"
            ]
            lines += [
                f"gw-{tag},{bus.id},{host},{port},dlt645,{bus.baud},150,1,{m.id},{m.address},dlt645-generic,electricity,1"
                for m in bus.meters
            ]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://collector", auth=service_auth("collector")
            ) as http:
                imported = await http.post(
                    "/v1/registry/import", content="\n".join(lines) + "\n", headers={"Content-Type": "text/csv"}
                )
                assert imported.status_code == 200, imported.text

                async with asyncio.timeout(20):
                    while not (stats := next((s for s in received if len(s.meters) == 2), None)):
                        await asyncio.sleep(0.05)
                assert message_topic_ok(stats, tag)
                good, bad = stats.meters
                assert (good.meter_id, good.failures) == (f"m-{tag}-0", 0)
                assert good.attempts >= 1
                assert bad.meter_id == f"m-{tag}-1"
                assert bad.failures == bad.attempts == bad.errors["checksum"] >= 1
                await http.delete(f"/v1/gateways/gw-{tag}")
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


def message_topic_ok(stats: PollStats, tag: str) -> bool:
    return stats.source.endswith(f"t-{tag}") and stats.window_end - stats.window_start == timedelta(seconds=WINDOW)
