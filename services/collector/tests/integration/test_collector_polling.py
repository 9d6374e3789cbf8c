"""The poller against the DL/T 645 simulator over real sockets: batches, fairness and priority, dead meters,
dead gateways, garbled replies and commands, with device state in real PostgreSQL and the real local store."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_collector.adapters.device_states import DeviceStates
from shuidian_collector.adapters.poller import GatewayPoller, PollPolicy
from shuidian_collector.adapters.store import LocalStore
from shuidian_collector.app import drivers
from shuidian_collector.domain.devices import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import free_port
from shuidian_devstack.pytest_plugin import eventually, migrated_engine
from shuidian_kit.db import create_engine
from shuidian_protocols import dlt645
from shuidian_shared import topics
from shuidian_shared.messages import (
    CommandKind,
    CommandOrigin,
    CommandRequested,
    CommandStatus,
    DeviceState,
    GatewayStatus,
    ReadingBatch,
    RelayState,
    Utility,
)
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, FaultKind

pytestmark = pytest.mark.integration
DI_ENERGY = bytes([0x33, 0x32, 0x34, 0x33])  # 0001FF00 (total + tariffs) as it travels (+33, little-endian)


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated_engine(database_url, "shuidian_collector", "collector")
    yield engine
    await engine.dispose()


def estate(
    tag: str, buses: dict[str, int], *, baud: int = 9600, faults: dict[int, list[dict[str, Any]]] | None = None
) -> Estate:
    """One gateway; `buses` maps bus suffix → number of meters; meter n of every bus gets `faults[n]`."""
    faults = faults or {}
    return Estate.model_validate(
        {
            "seed": 3,
            "gateways": [
                {
                    "id": f"gw-{tag}",
                    "buses": [
                        {
                            "id": f"bus-{tag}-{suffix}",
                            "protocol": "dlt645",
                            "baud": baud,
                            "reply_delay_ms": 20,
                            "meters": [
                                {
                                    "id": f"m-{tag}-{suffix}{n}",
                                    "address": f"{n + 1:012d}",
                                    "initial_register": str(100 + n),
                                    "prepaid_money": "50.00" if n == 0 else None,
                                    "faults": faults.get(n, []),
                                }
                                for n in range(count)
                            ],
                        }
                        for suffix, count in buses.items()
                    ],
                }
            ],
        }
    )


def gateway_config(sim: Simulator, *, interval: int = 60, timeout_ms: int = 300, retries: int = 1) -> GatewayConfig:
    (gateway,) = sim.estate.gateways
    return GatewayConfig(
        gateway.id,
        tuple(
            BusConfig(
                bus.id,
                gateway.id,
                *sim.bus_endpoint(bus.id),
                BusProtocol(bus.protocol.value),
                bus.baud,
                timeout_ms,
                retries,
                tuple(MeterConfig(m.id, m.address, m.model, Utility(m.utility), interval) for m in bus.meters),
            )
            for bus in gateway.buses
        ),
    )


class Rig:
    def __init__(self, sim: Simulator, poller: GatewayPoller, store: LocalStore) -> None:
        self.sim, self.poller, self.store = sim, poller, store

    async def messages(self) -> list[tuple[str, dict[str, Any]]]:
        return [(p.topic, json.loads(p.payload)) for p in await self.store.peek(10_000)]

    async def batches(self) -> list[ReadingBatch]:
        return [
            ReadingBatch.model_validate(m)
            for t, m in await self.messages()
            if t == topics.readings(self.poller.gateway.gateway_id)
        ]

    async def states(self, meter_id: str) -> list[DeviceState]:
        return [DeviceState.model_validate(m) for t, m in await self.messages() if t == topics.meter_state(meter_id)]

    async def gateway_events(self) -> list[GatewayStatus]:
        gateway = self.poller.gateway.gateway_id
        return [
            GatewayStatus.model_validate(m) for t, m in await self.messages() if t == topics.gateway_status(gateway)
        ]


@pytest.fixture
async def rig_factory(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    stack: list[Any] = []

    async def make(sim_estate: Estate, **config: Any) -> Rig:
        sim = Simulator(sim_estate)
        await sim.__aenter__()
        stack.append(sim)
        store = LocalStore(tmp_path / f"{uuid.uuid4().hex}.sqlite3", max_rows=1000)
        await store.__aenter__()
        stack.append(store)
        settings = CollectorSettings(environment="test", confirm_interval_seconds=0.05)
        poller = GatewayPoller(
            gateway_config(sim, **config),
            drivers(settings),
            store,
            DeviceStates(engine, "test"),
            "test",
            PollPolicy(gateway_backoff_initial=0.2, gateway_backoff_max=0.5),
        )
        stack.append(poller)
        return Rig(sim, poller, store)

    yield make
    for item in reversed(stack):
        if isinstance(item, GatewayPoller):
            for bus in item.buses.values():
                await bus.link.close()
        else:
            await item.__aexit__(None, None, None)


async def test_one_cycle_is_one_batch_of_fresh_readings(
    rig_factory: Callable[..., Awaitable[Rig]], engine: AsyncEngine
) -> None:
    rig = await rig_factory(estate("batch", {"a": 3, "b": 2}))
    before = datetime.now(UTC)
    readings = await rig.poller.poll(rig.poller.meter_ids)
    after = datetime.now(UTC)
    (batch,) = await rig.batches()
    assert batch.gateway_id == "gw-batch"
    assert {r.meter_id for r in batch.readings} == {
        "m-batch-a0",
        "m-batch-a1",
        "m-batch-a2",
        "m-batch-b0",
        "m-batch-b1",
    }
    assert list(batch.readings) == readings
    for reading in batch.readings:
        truth = rig.sim.meter(reading.meter_id).register
        value = reading.registers["energy_active_import_total"]
        assert isinstance(value, Decimal)
        assert value <= truth  # read before "now", never invented
        assert before <= reading.sampled_at <= after
        assert reading.relay is RelayState.CLOSED
    assert batch.readings[0].registers.get("balance_money") is not None  # the money-prepaid meter
    # Device state went to PostgreSQL in one statement per cycle, and the first sight of each meter is an edge.
    async with engine.connect() as conn:
        online = (
            await conn.execute(
                text("SELECT count(*) FROM collector.device_state WHERE gateway_id = 'gw-batch' AND online")
            )
        ).scalar_one()
    assert online == 5
    assert len(await rig.states("m-batch-a0")) == 1
    await rig.poller.poll(rig.poller.meter_ids)
    assert len(await rig.states("m-batch-a0")) == 1, "an unchanged state must not be republished"
    second = (await rig.batches())[1]
    assert {r.reading_id for r in second.readings}.isdisjoint({r.reading_id for r in batch.readings})


async def test_buses_run_in_parallel_with_one_exchange_in_flight_each(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(estate("par", {"a": 4, "b": 4}))
    await rig.poller.poll(rig.poller.meter_ids)
    spans = {}
    for bus in ("bus-par-a", "bus-par-b"):
        log = rig.sim.wire_log(bus)
        directions = [d for _, d, _ in log]
        # Strict request/reply alternation: never a second request before the reply to the first.
        assert directions == ["rx", "tx"] * (len(log) // 2)
        spans[bus] = (log[0][0], log[-1][0])
    (a_start, a_end), (b_start, b_end) = spans.values()
    assert a_start < b_end, "the two buses were polled one after the other"
    assert b_start < a_end, "the two buses were polled one after the other"


async def test_a_command_jumps_ahead_of_queued_polls(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory(estate("prio", {"a": 8}, baud=2400))
    meters = rig.poller.meter_ids
    polling = asyncio.create_task(rig.poller.poll(meters))
    await eventually(lambda: _rx_count(rig, "bus-prio-a", 2), "polls to be under way")
    request = _command("m-prio-a7", CommandKind.TRIP)
    submitted = len(rig.sim.wire_log("bus-prio-a"))
    outcome = await rig.poller.execute(request)
    await polling
    assert outcome.status is CommandStatus.CONFIRMED
    log = rig.sim.wire_log("bus-prio-a")
    trip_at = next(i for i, (_, d, f) in enumerate(log) if d == "rx" and dlt645.decode_frame(f).function == 0x1C)
    # At most the exchange in flight (request + reply) went before the trip.
    assert trip_at - submitted <= 2
    polls_after = [f for _, d, f in log[trip_at:] if d == "rx" and f[14:18] == DI_ENERGY]
    assert polls_after, "the polls queued before the command ran after it"
    assert rig.sim.meter("m-prio-a7").relay_open


async def _rx_count(rig: Rig, bus: str, at_least: int) -> bool:
    return sum(1 for _, d, _ in rig.sim.wire_log(bus) if d == "rx") >= at_least


def _command(meter_id: str, kind: CommandKind, *, ttl: float = 300) -> CommandRequested:
    return CommandRequested(
        source="test",
        command_id=uuid.uuid4(),
        meter_id=meter_id,
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        origin=CommandOrigin.OPERATOR,
        reason="test",
    )


async def test_a_dead_meter_is_reported_once_and_backed_off(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory(estate("dead", {"a": 3}, faults={1: [{"kind": "offline"}]}), interval=1)
    meters = rig.poller.meter_ids
    for _ in range(3):
        await rig.poller.poll(meters)
    batches = await rig.batches()
    assert [sorted(r.meter_id for r in b.readings) for b in batches] == [["m-dead-a0", "m-dead-a2"]] * 3
    (offline,) = await rig.states("m-dead-a1")
    assert not offline.online
    assert offline.reason is not None
    assert offline.reason.startswith("timeout")
    assert rig.poller.schedule.failures("m-dead-a1") == 3
    assert rig.poller.schedule.due_at("m-dead-a1") > rig.poller.schedule.due_at("m-dead-a0")
    assert await rig.gateway_events() == [] or all(e.online for e in await rig.gateway_events())
    # Recovery is one more edge.
    rig.sim.clear_fault("m-dead-a1", FaultKind.OFFLINE)
    await rig.poller.poll(["m-dead-a1"])
    assert [s.online for s in await rig.states("m-dead-a1")] == [False, True]


@pytest.mark.parametrize(("fault", "answers"), [(FaultKind.GARBAGE, True), (FaultKind.BAD_CHECKSUM, False)])
async def test_line_noise_is_skipped_and_bad_checksums_are_never_taken(
    rig_factory: Callable[..., Awaitable[Rig]], fault: FaultKind, answers: bool
) -> None:
    tag = f"noise{fault.value.replace('_', '')}"
    rig = await rig_factory(estate(tag, {"a": 2}, faults={0: [{"kind": fault.value}]}), retries=0)
    readings = await rig.poller.poll(rig.poller.meter_ids)
    assert (f"m-{tag}-a0" in {r.meter_id for r in readings}) is answers
    assert f"m-{tag}-a1" in {r.meter_id for r in readings}
    if not answers:
        (state,) = await rig.states(f"m-{tag}-a0")
        assert state.reason is not None
        assert state.reason.startswith("garbled")


async def test_a_dead_gateway_is_one_event_not_one_per_meter(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory(estate("gwdown", {"a": 3, "b": 2}), interval=1)
    run = asyncio.create_task(rig.poller.run())
    try:
        await eventually(lambda: _gateway_online(rig, True), "the gateway to be seen online")
        rig.sim.set_gateway_online("gw-gwdown", False)
        await eventually(lambda: _gateway_online(rig, False), "the gateway to go offline")
        await asyncio.sleep(1.0)  # a few probes while it is down
        rig.sim.set_gateway_online("gw-gwdown", True)
        await eventually(lambda: _gateway_online(rig, True, edges=3), "the gateway to come back")
        await eventually(lambda: _all_read_after_recovery(rig), "every meter to be read again")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    events = await rig.gateway_events()
    assert [e.online for e in events] == [True, False, True]
    assert events[1].meters == 5
    assert events[1].reason
    for meter in rig.poller.meter_ids:
        # No per-meter offline announcement while the gateway was down.
        assert all(s.online for s in await rig.states(meter))


async def _gateway_online(rig: Rig, online: bool, edges: int | None = None) -> bool:
    events = await rig.gateway_events()
    return bool(events) and events[-1].online is online and (edges is None or len(events) == edges)


async def _all_read_after_recovery(rig: Rig) -> bool:
    events = await rig.gateway_events()
    back = events[-1].occurred_at
    seen = {r.meter_id for b in await rig.batches() for r in b.readings if r.sampled_at > back}
    return seen == set(rig.poller.meter_ids)


async def test_commands_are_confirmed_and_a_stuck_relay_fails(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory(estate("cmd", {"a": 2}, faults={1: [{"kind": "stuck_relay"}]}))
    trip = await rig.poller.execute(_command("m-cmd-a0", CommandKind.TRIP))
    assert trip.status is CommandStatus.CONFIRMED
    assert trip.relay is RelayState.OPEN
    assert trip.response_frame is not None
    assert trip.request_frame is not None
    close = await rig.poller.execute(_command("m-cmd-a0", CommandKind.DIRECT_CLOSE))
    assert close.status is CommandStatus.CONFIRMED
    assert close.relay is RelayState.CLOSED
    stuck = await rig.poller.execute(_command("m-cmd-a1", CommandKind.TRIP))
    assert stuck.status is CommandStatus.FAILED
    assert "did not change state" in stuck.detail
    assert stuck.relay is RelayState.CLOSED
    valve = await rig.poller.execute(_command("m-cmd-a0", CommandKind.VALVE_CLOSE))
    assert valve.status is CommandStatus.UNSUPPORTED
    assert "not supported by DL/T 645" in valve.detail
    assert valve.request_frame is None


def mixed_estate(tag: str) -> Estate:
    water = {"utility": "water", "initial_register": "12.5", "actuator_ms": 200}
    return Estate.model_validate(
        {
            "seed": 9,
            "gateways": [
                {
                    "id": f"gw-{tag}",
                    "buses": [
                        {
                            "id": f"bus-{tag}-cjt",
                            "protocol": "cjt188",
                            "baud": 2400,
                            "meters": [
                                {"id": f"W-{tag}-1", "address": "00000012345678", "model": "cjt188-water", **water}
                            ],
                        },
                        {
                            "id": f"bus-{tag}-rtu",
                            "protocol": "modbus-rtu",
                            "baud": 9600,
                            "meters": [
                                {"id": f"W-{tag}-2", "address": "1", "model": "generic-water-valve", **water},
                                {
                                    "id": f"E-{tag}-3",
                                    "address": "2",
                                    "model": "acrel-ddsy1352",
                                    "initial_register": "321",
                                },
                            ],
                        },
                        {
                            "id": f"bus-{tag}-tcp",
                            "protocol": "modbus-tcp",
                            "baud": 9600,
                            "meters": [
                                {"id": f"E-{tag}-4", "address": "7", "model": "chint-ddsu666", "initial_register": "77"}
                            ],
                        },
                        {
                            "id": f"bus-{tag}-97",
                            "protocol": "dlt645-1997",
                            "baud": 1200,
                            "meters": [
                                {
                                    "id": f"E-{tag}-5",
                                    "address": "000000001997",
                                    "model": "dlt645-1997",
                                    "initial_register": "9",
                                }
                            ],
                        },
                    ],
                }
            ],
        }
    )


async def test_every_protocol_against_the_simulator_makes_one_canonical_batch(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    tag = uuid.uuid4().hex[:6]
    rig = await rig_factory(mixed_estate(tag), timeout_ms=1000)
    readings = {r.meter_id: r for r in await rig.poller.poll(rig.poller.meter_ids)}
    assert set(readings) == set(rig.poller.meter_ids), "every protocol answered in the same cycle"
    (batch,) = await rig.batches()
    assert len(batch.readings) == 5
    for meter_id, reading in readings.items():
        register = "water_volume_total" if meter_id.startswith("W") else "energy_active_import_total"
        value = reading.registers[register]
        assert isinstance(value, Decimal)
        assert Decimal(0) < value <= rig.sim.meter(meter_id).register + Decimal("0.01")
    assert readings[f"W-{tag}-1"].valve is not None
    assert readings[f"W-{tag}-2"].valve is not None
    # Valves move in a few hundred ms here; the command is confirmed by reading the state back.
    outcome = await rig.poller.execute(_command(f"W-{tag}-1", CommandKind.VALVE_CLOSE))
    assert outcome.status is CommandStatus.CONFIRMED, outcome.detail
    assert rig.sim.meter(f"W-{tag}-1").relay_open
    # The shipped Modbus valve profile's control registers are not confirmed by a vendor manual: not written.
    refused = await rig.poller.execute(_command(f"W-{tag}-2", CommandKind.VALVE_CLOSE))
    assert refused.status is CommandStatus.UNSUPPORTED, refused.detail
    assert not rig.sim.meter(f"W-{tag}-2").relay_open


async def test_polling_carries_on_while_the_database_is_down(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    dead = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", pool_size=1)
    async with Simulator(estate(tag, {"a": 2})) as sim, LocalStore(tmp_path / "s.sqlite3", max_rows=10) as store:
        settings = CollectorSettings(environment="test")
        poller = GatewayPoller(
            gateway_config(sim), drivers(settings), store, DeviceStates(dead, "test", write_timeout=1.0), "test"
        )
        try:
            readings = await poller.poll(poller.meter_ids)
        finally:
            for bus in poller.buses.values():
                await bus.link.close()
            await dead.dispose()
        assert len(readings) == 2
        topics_stored = [p.topic for p in await store.peek(10)]
        assert topics_stored[0] == topics.readings(f"gw-{tag}")
        assert topics_stored.count(topics.meter_state(f"m-{tag}-a0")) == 1


async def test_meters_of_a_gateway_that_comes_back_are_polled_at_their_interval(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    """The probe that finds the gateway back must not leave its meter waiting out the back-off of the outage."""
    interval = 2
    rig = await rig_factory(estate("gwback", {"a": 2, "b": 1}), interval=interval)
    run = asyncio.create_task(rig.poller.run())
    try:
        await eventually(lambda: _gateway_online(rig, True), "the gateway to be seen online")
        rig.sim.set_gateway_online("gw-gwback", False)
        await eventually(lambda: _gateway_online(rig, False), "the gateway to go offline")
        await eventually(lambda: _probed(rig, 4), "a few probes while it is down")
        rig.sim.set_gateway_online("gw-gwback", True)
        await eventually(lambda: _gateway_online(rig, True, edges=3), "the gateway to come back")
        now = time.monotonic()
        waits = {m: rig.poller.schedule.due_at(m) - now for m in rig.poller.meter_ids}
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert all(wait <= interval for wait in waits.values()), waits


async def _probed(rig: Rig, probes: int) -> bool:
    return rig.poller.health.probes >= probes
