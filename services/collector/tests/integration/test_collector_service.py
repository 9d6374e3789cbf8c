"""The collector service as deployed: its HTTP API, the real broker (a private one where the test stops
it), real PostgreSQL and the DL/T 645 simulator. Commands over MQTT, store-and-forward through a broker
outage and a restart, bulk CSV commissioning, and two shards on one broker."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_collector.adapters.store import REFUSED, LocalStore
from shuidian_collector.app import create_app
from shuidian_collector.domain.devices import shard_of
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import Broker, free_port, service_auth
from shuidian_devstack.pytest_plugin import eventually
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import (
    CommandKind,
    CommandOrigin,
    CommandRequested,
    CommandResult,
    CommandStatus,
    ReadingBatch,
)
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, Fault, FaultKind

pytestmark = pytest.mark.integration
DI_ENERGY = bytes([0x33, 0x32, 0x34, 0x33])  # 0001FF00 (total + tariffs) as it travels


class Listener:
    """Collects every message on `filters`; a fixed `client_id` makes it a persistent session that survives
    a broker restart (the broker keeps what arrives while it reconnects)."""

    def __init__(self, url: str, filters: list[str], client_id: str | None = None) -> None:
        self.address = BrokerAddress.parse(url)
        self.filters = filters
        self.client_id = client_id
        self.messages: list[tuple[str, bytes]] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.address.host,
                    self.address.port,
                    identifier=self.client_id,
                    clean_session=self.client_id is None,
                ) as client:
                    for topic_filter in self.filters:
                        await client.subscribe(topic_filter, qos=1)
                    self.ready.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.messages.append((message.topic.value, message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def batches(self) -> list[ReadingBatch]:
        return [
            ReadingBatch.model_validate_json(p) for t, p in self.messages if t.startswith(topics.readings("x")[:-1])
        ]

    def results(self) -> list[CommandResult]:
        return [CommandResult.model_validate_json(p) for t, p in self.messages if t.endswith("/command-result")]


def sim_estate(tag: str, gateways: int = 1, meters: int = 3, faults: dict[str, list[Fault]] | None = None) -> Estate:
    faults = faults or {}
    return Estate.model_validate(
        {
            "seed": 5,
            "gateways": [
                {
                    "id": f"gw-{tag}-{g}",
                    "buses": [
                        {
                            "id": f"bus-{tag}-{g}",
                            "baud": 9600,
                            "reply_delay_ms": 10,
                            "meters": [
                                {
                                    "id": f"E-{tag}-{g}-{n}",
                                    "address": f"{g:04d}{n + 1:08d}",
                                    "initial_register": "500",
                                    "faults": [f.model_dump() for f in faults.get(f"E-{tag}-{g}-{n}", [])],
                                }
                                for n in range(meters)
                            ],
                        }
                    ],
                }
                for g in range(gateways)
            ],
        }
    )


def estate_csv(sim: Simulator, *, interval: int = 1) -> str:
    lines = [
        "gateway_id,bus_id,host,port,protocol,baud,timeout_ms,retries,meter_id,address,model,utility,poll_interval_s"
    ]
    for gateway in sim.estate.gateways:
        for bus in gateway.buses:
            host, port = sim.bus_endpoint(bus.id)
            for meter in bus.meters:
                lines.append(
                    f"{gateway.id},{bus.id},{host},{port},dlt645,{bus.baud},300,1,{meter.id},{meter.address},"
                    f"dlt645-generic,electricity,{interval}"
                )
    return "\n".join(lines) + "\n"


async def _serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server, task), "the collector to start")
    return server, task


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise RuntimeError("the collector stopped during start-up")
    return bool(server.started)


class Collector:
    def __init__(self, app: FastAPI, url: str, client: httpx.AsyncClient) -> None:
        self.app, self.url, self.http = app, url, client

    @property
    def store(self) -> LocalStore:
        store: LocalStore = self.app.state.collector.store
        return store


@contextlib.asynccontextmanager
async def collector(database_url: str, mqtt_url: str, **settings: Any) -> AsyncIterator[Collector]:
    port = free_port()
    options: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr(database_url),
        "mqtt_url": mqtt_url,
        "instance_id": f"t-{uuid.uuid4().hex[:8]}",
        "mqtt_clean_session": True,
        "http_port": port,
        "registry_refresh_seconds": 0.5,
        "confirm_interval_seconds": 0.05,
        **settings,
    }
    app = create_app(CollectorSettings(**options))
    server, task = await _serve(app, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", auth=service_auth("collector")) as client:
            yield Collector(app, f"http://127.0.0.1:{port}", client)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


async def commission(c: Collector, sim: Simulator, **kw: Any) -> None:
    response = await c.http.post(
        "/v1/registry/import", content=estate_csv(sim, **kw), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 200, response.text


async def decommission(c: Collector, sim: Simulator) -> None:
    for gateway in sim.estate.gateways:
        await c.http.delete(f"/v1/gateways/{gateway.id}")


def command(
    meter_id: str, kind: CommandKind, *, ttl: float = 300, attempt: int = 1, command_id: uuid.UUID | None = None
) -> CommandRequested:
    return CommandRequested(
        source="test",
        command_id=command_id or uuid.uuid4(),
        meter_id=meter_id,
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        origin=CommandOrigin.OPERATOR,
        reason="test",
        attempt=attempt,
    )


async def publish(url: str, topic: str, message: CommandRequested) -> None:
    address = BrokerAddress.parse(url)
    async with aiomqtt.Client(address.host, address.port) as client:
        await client.publish(topic, message.model_dump_json().encode(), qos=1)


def trips_on_wire(sim: Simulator, bus_id: str) -> int:
    return sum(1 for _, d, f in sim.wire_log(bus_id) if d == "rx" and f[12] == 0x1C)


async def test_commands_over_mqtt_run_once_per_attempt(database_url: str, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    estate = sim_estate(tag, meters=2, faults={f"E-{tag}-0-1": [Fault(kind=FaultKind.STUCK_RELAY)]})
    async with Simulator(estate) as sim, collector(database_url, mqtt_url) as c:
        await commission(c, sim, interval=5)
        ok_meter, stuck_meter = f"E-{tag}-0-0", f"E-{tag}-0-1"
        async with Listener(mqtt_url, [topics.command_result(ok_meter), topics.command_result(stuck_meter)]) as results:
            await eventually(lambda: _online(c, f"gw-{tag}-0"), "the gateway to be polled")
            trip = command(ok_meter, CommandKind.TRIP)
            await publish(mqtt_url, topics.meter_command(ok_meter), trip)
            await eventually(lambda: _result_count(results, 1), "the trip result")
            # Redelivered: the stored result is published again, the meter is not tripped again.
            await publish(mqtt_url, topics.meter_command(ok_meter), trip)
            await eventually(lambda: _result_count(results, 2), "the republished result")
            first, again = results.results()
            assert first.status is CommandStatus.CONFIRMED
            assert (again.command_id, again.status, again.message_id) == (
                first.command_id,
                first.status,
                first.message_id,
            )
            assert first.request_frame is not None
            assert first.response_frame is not None
            assert trips_on_wire(sim, f"bus-{tag}-0") == 1
            # Attempt 2 of the same command is a new execution.
            await publish(
                mqtt_url,
                topics.meter_command(ok_meter),
                command(ok_meter, CommandKind.TRIP, attempt=2, command_id=trip.command_id),
            )
            await eventually(lambda: _result_count(results, 3), "attempt 2")
            assert results.results()[2].attempt == 2
            assert trips_on_wire(sim, f"bus-{tag}-0") == 2
            # Expired before it arrived: reported, never sent.
            await publish(mqtt_url, topics.meter_command(ok_meter), command(ok_meter, CommandKind.DIRECT_CLOSE, ttl=-1))
            await eventually(lambda: _result_count(results, 4), "the expired result")
            assert results.results()[3].status is CommandStatus.EXPIRED
            assert sum(1 for _, d, f in sim.wire_log(f"bus-{tag}-0") if d == "rx" and f[12] == 0x1C) == 2
            # A stuck relay acknowledges and does not move: failed, with the reason.
            await publish(mqtt_url, topics.meter_command(stuck_meter), command(stuck_meter, CommandKind.TRIP))
            await eventually(lambda: _result_count(results, 5), "the stuck relay's result")
            stuck = results.results()[4]
            assert stuck.status is CommandStatus.FAILED
            assert "did not change state" in stuck.detail
        await decommission(c, sim)


async def _online(c: Collector, gateway_id: str) -> bool:
    response = await c.http.get(f"/v1/gateways/{gateway_id}/status")
    return response.status_code == 200 and response.json()["online"] is True


async def _result_count(listener: Listener, n: int) -> bool:
    return len(listener.results()) >= n


def energy_replies(sim: Simulator, bus_id: str) -> dict[str, int]:
    """Ground truth: energy reads the meters answered on the wire, by meter address (as it travels)."""
    counts: dict[str, int] = {}
    for _, direction, frame in sim.wire_log(bus_id):
        start = frame.index(0x68)
        if direction == "tx" and frame[start + 8] == 0x91 and frame[start + 10 : start + 14] == DI_ENERGY:
            address = frame[start + 1 : start + 7][::-1].hex()
            counts[address] = counts.get(address, 0) + 1
    return counts


@pytest.fixture
def private_broker() -> Any:
    data = Path(tempfile.mkdtemp(prefix="collector-broker-"))
    broker = Broker(data)
    yield broker
    broker.stop()
    shutil.rmtree(data, ignore_errors=True)


async def test_a_broker_outage_loses_no_reading(database_url: str, private_broker: Broker, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    url = private_broker.start()
    async with Simulator(sim_estate(tag, meters=3)) as sim, collector(database_url, url, data_dir=tmp_path) as c:
        async with Listener(url, [topics.readings(f"gw-{tag}-0")], client_id=f"listener-{tag}") as listener:
            await commission(c, sim)
            await eventually(lambda: _batches(listener, 2), "readings before the outage")
            private_broker.stop()
            await eventually(lambda: _depth(c, 3), "readings to pile up in the local store")
            private_broker.start()
            await eventually(lambda: _depth(c, 0, exact=True), "the store to drain after the outage", timeout=60)
            # Stop the meters answering, so the ground truth stops growing, and let the store drain.
            for meter in sim.meters:
                sim.set_fault(meter, Fault(kind=FaultKind.OFFLINE))
            await asyncio.sleep(1.0)
            await eventually(lambda: _depth(c, 0, exact=True), "the last readings to be published")
            truth = energy_replies(sim, f"bus-{tag}-0")
            await eventually(lambda: _received_all(listener, sum(truth.values())), "every reading to arrive")
        received: dict[str, set[uuid.UUID]] = {}
        for batch in listener.batches():
            for reading in batch.readings:
                received.setdefault(reading.meter_id, set()).add(reading.reading_id)
        by_address = {m.spec.address: m.spec.id for m in sim.meters.values()}
        assert {by_address[a]: n for a, n in truth.items()} == {m: len(ids) for m, ids in received.items()}
        assert all(n >= 3 for n in truth.values())
        await decommission(c, sim)


async def _batches(listener: Listener, n: int) -> bool:
    return len(listener.batches()) >= n


async def _depth(c: Collector, n: int, *, exact: bool = False) -> bool:
    return c.store.depth == n if exact else c.store.depth >= n


async def _received_all(listener: Listener, n: int) -> bool:
    return len({r.reading_id for b in listener.batches() for r in b.readings}) >= n


async def test_a_restart_with_a_full_store_publishes_what_it_held(
    database_url: str, private_broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    instance = f"restart-{tag}"
    refused_before = REFUSED._value.get()
    async with Simulator(sim_estate(tag, meters=2)) as sim:
        # The broker is down from the start: everything goes to the store, which holds 3 batches at most.
        # No poll statistics window closes during the test: a PollStats message would take one of the 3 places.
        quiet = {"store_max_rows": 3, "poll_stats_window_seconds": 3600}
        async with collector(database_url, private_broker.url, data_dir=tmp_path, instance_id=instance, **quiet) as c:
            await commission(c, sim)
            await eventually(lambda: _refused(refused_before), "the full store to refuse new readings")
            held = [p.payload for p in await c.store.peek(100)]
        stored_batches = [p for p in held if b'"readings"' in p]
        assert len(stored_batches) == 3
        url = private_broker.start()
        async with (
            Listener(url, [topics.readings(f"gw-{tag}-0")]) as listener,
            collector(database_url, url, data_dir=tmp_path, instance_id=instance, **quiet) as c2,
        ):
            await eventually(lambda: _batches(listener, 4), "the stored batches and a fresh one")
            published = [p for t, p in listener.messages][:3]
            assert published == stored_batches, "stored batches must come out first, in order, unchanged"
            await decommission(c2, sim)


async def _refused(before: float) -> bool:
    return bool(REFUSED._value.get() > before)


async def test_csv_import_is_all_or_nothing_and_exports_back(database_url: str, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    async with Simulator(sim_estate(tag, gateways=2, meters=2)) as sim, collector(database_url, mqtt_url) as c:
        good = estate_csv(sim, interval=60)
        lines = good.splitlines()
        bad = "\n".join(
            [
                lines[0],
                lines[1],
                lines[2].replace(",dlt645-generic,", ",,"),  # no model
                lines[3].replace(",dlt645,", ",dlt999,"),  # unknown protocol
                lines[4].replace(f"E-{tag}-1-1", f"E-{tag}-0-0"),  # duplicate meter id
                lines[1].replace(f"E-{tag}-0-0", f"E-{tag}-x").replace(",0000000000", ",12ab000000"),  # bad address
            ]
        )
        refused = await c.http.post("/v1/registry/import", content=bad, headers={"Content-Type": "text/csv"})
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert [e["line"] for e in refused.json()["errors"]] == [3, 4, 5, 6]
        assert "address" in refused.json()["errors"][3]["errors"][0]
        exported = await c.http.get("/v1/registry/export")
        assert f"E-{tag}" not in exported.text, "a refused import must write nothing"
        accepted = await c.http.post("/v1/registry/import", content=good, headers={"Content-Type": "text/csv"})
        assert accepted.json() == {"gateways": 2, "buses": 2, "meters": 4}
        exported = await c.http.get("/v1/registry/export")
        ours = [line for line in exported.text.splitlines() if f"E-{tag}" in line]
        assert sorted(ours) == sorted(lines[1:])
        # Changes apply without a restart: the new gateways are being polled.
        await eventually(lambda: _online(c, f"gw-{tag}-1"), "the imported gateway to be polled")
        async with Listener(mqtt_url, [topics.gateway_status(f"gw-{tag}-1")]) as status:
            await eventually(lambda: _has_messages(status, 1), "the retained gateway status")
            # A meter added to a running gateway is polled from the next cycle, with no new gateway edge.
            added = await c.http.put(
                f"/v1/meters/E-{tag}-added",
                json={
                    "bus_id": f"bus-{tag}-1",
                    "address": "000199999999",
                    "model": "dlt645-generic",
                    "utility": "electricity",
                },
            )
            assert added.status_code == 204, added.text
            await eventually(lambda: _has_state(c, f"E-{tag}-added"), "the added meter to be polled")
            assert len(status.messages) == 1, "rebuilding a poller must not announce the gateway again"
        metrics = (await c.http.get("/metrics")).text
        assert f'collector_bus_busy_seconds_total{{bus="bus-{tag}-1"}}' in metrics
        for name in (
            "collector_bus_transactions_total",
            "collector_bus_transaction_seconds_bucket",
            "collector_bus_errors_total",
            "collector_store_depth_rows",
            "collector_poll_lag_seconds_bucket",
        ):
            assert name in metrics, name
        # Another meter on an address already taken on that bus is a conflict, not a silent overwrite.
        clash = lines[1].replace(f"E-{tag}-0-0", f"E-{tag}-new")
        conflict = await c.http.post(
            "/v1/registry/import", content=f"{lines[0]}\n{clash}\n", headers={"Content-Type": "text/csv"}
        )
        assert conflict.status_code == 409
        await decommission(c, sim)


async def test_two_shards_split_the_gateways_and_commands_reach_the_owner(database_url: str, mqtt_url: str) -> None:
    # A tag whose four gateways hash onto both shards (most do).
    tag = next(
        t
        for t in (uuid.uuid4().hex[:6] for _ in range(100))
        if len({shard_of(f"gw-{t}-{g}", 2) for g in range(4)}) == 2
    )
    estate = sim_estate(tag, gateways=4, meters=1)
    shards = {g.id: shard_of(g.id, 2) for g in estate.gateways}
    async with (
        Simulator(estate) as sim,
        collector(database_url, mqtt_url, shard_index=0, shard_count=2, instance_id=f"a-{tag}") as a,
        collector(database_url, mqtt_url, shard_index=1, shard_count=2, instance_id=f"b-{tag}"),
    ):
        filters = [topics.readings(g) for g in shards] + [topics.ALL_COMMAND_RESULTS]
        async with Listener(mqtt_url, filters) as listener:
            await commission(a, sim)
            await eventually(lambda: _every_gateway_read(listener, set(shards)), "readings from every gateway")
            sources = {b.gateway_id: set() for b in listener.batches()}  # type: dict[str, set[str]]
            for batch in listener.batches():
                sources[batch.gateway_id].add(batch.source)
            for gateway, shard in shards.items():
                assert sources[gateway] == {f"collector-{'ab'[shard]}-{tag}"}, gateway
            owned_by_b = next(g for g, s in shards.items() if s == 1)
            meter = f"E-{tag}-{owned_by_b.rsplit('-', 1)[1]}-0"
            await publish(mqtt_url, topics.meter_command(meter), command(meter, CommandKind.TRIP))
            await eventually(lambda: _result_count(listener, 1), "the trip result")
            await asyncio.sleep(0.5)
            (result,) = listener.results()
            assert result.source == f"collector-b-{tag}"
            assert result.status is CommandStatus.CONFIRMED
        await decommission(a, sim)


async def _every_gateway_read(listener: Listener, gateways: set[str]) -> bool:
    return {b.gateway_id for b in listener.batches()} == gateways


async def _has_messages(listener: Listener, n: int) -> bool:
    return len(listener.messages) >= n


async def _has_state(c: Collector, meter_id: str) -> bool:
    return (await c.http.get(f"/v1/meters/{meter_id}/state")).status_code == 200


async def test_a_configured_gateway_list_overrides_the_hash(database_url: str, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    async with (
        Simulator(sim_estate(tag, gateways=3, meters=1)) as sim,
        collector(database_url, mqtt_url, gateways=(f"gw-{tag}-1",), shard_index=1, shard_count=4) as c,
    ):
        await commission(c, sim, interval=60)
        await eventually(lambda: _online(c, f"gw-{tag}-1"), "the configured gateway to be polled")
        for other in (f"gw-{tag}-0", f"gw-{tag}-2"):
            assert (await c.http.get(f"/v1/gateways/{other}/status")).status_code == 404
        await decommission(c, sim)
