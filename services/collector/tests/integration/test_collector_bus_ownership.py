"""One transaction in flight per RS-485 bus, also across registry changes: the collector service as deployed
(real PostgreSQL, real broker) polls a slow, busy DL/T 645 bus in the simulator while its registry keeps
changing, and the simulator counts every request that reached the line while another connection's exchange
was still on it."""

from __future__ import annotations

import uuid
from functools import partial

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from shuidian_collector.adapters.fleet import Fleet
from shuidian_collector.adapters.registry import Registry
from shuidian_collector.app import create_app
from shuidian_collector.domain.devices import BusConfig, BusProtocol, MeterConfig
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.pytest_plugin import eventually
from shuidian_shared.messages import Utility
from shuidian_simulator import Simulator
from shuidian_simulator.adapters.bus import SimBus
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.integration

METERS = 4


def _estate(tag: str) -> Estate:
    # 2400 baud and a 150 ms reply delay: an exchange holds the line for about a quarter of a second, so with
    # every meter due every second the line is busy nearly all the time, and a rebuild lands mid-exchange.
    return Estate.model_validate(
        {
            "seed": 11,
            "gateways": [
                {
                    "id": f"gw-{tag}",
                    "buses": [
                        {
                            "id": f"bus-{tag}",
                            "protocol": "dlt645",
                            "baud": 2400,
                            "reply_delay_ms": 150,
                            "meters": [
                                {"id": f"m-{tag}-{n}", "address": f"{n + 1:012d}", "initial_register": "100"}
                                for n in range(METERS)
                            ],
                        }
                    ],
                }
            ],
        }
    )


def _meter(tag: str, n: int, interval: int) -> MeterConfig:
    return MeterConfig(f"m-{tag}-{n}", f"{n + 1:012d}", "dlt645-generic", Utility.ELECTRICITY, interval)


async def test_a_registry_change_under_load_never_puts_two_exchanges_on_one_bus(
    database_url: str, mqtt_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:8]}",
        mqtt_clean_session=True,
        gateways=(f"gw-{tag}",),
        registry_refresh_seconds=30,  # only our refresh() rebuilds
    )
    app: FastAPI = create_app(settings)
    async with Simulator(_estate(tag)) as sim, app.router.lifespan_context(app):
        registry: Registry = app.state.collector.registry
        fleet: Fleet = app.state.collector.fleet
        line: SimBus = sim.buses[f"bus-{tag}"]
        host, port = sim.bus_endpoint(f"bus-{tag}")
        await registry.put_gateway(f"gw-{tag}", "ownership", None)
        await registry.put_bus(BusConfig(f"bus-{tag}", f"gw-{tag}", host, port, BusProtocol.DLT645, 2400, 1000, 1, ()))
        for n in range(METERS):
            await registry.put_meter(f"bus-{tag}", _meter(tag, n, 1))
        fleet.refresh()

        async def busy(at_least: int) -> bool:
            return line.stats.transactions >= at_least

        await eventually(lambda: busy(10), "the bus to be polled")
        for change in range(12):
            # A new interval for one meter (1 s ↔ 2 s) rebuilds the gateway's poller while the line is busy.
            before = line.stats.transactions
            await registry.put_meter(f"bus-{tag}", _meter(tag, change % METERS, 1 + (change // METERS + 1) % 2))
            fleet.refresh()
            await eventually(partial(busy, before + 4), "the rebuilt poller to use the bus")
        overlaps = line.stats.overlaps
        transactions = line.stats.transactions
        await registry.delete("gateway", f"gw-{tag}")
        fleet.refresh()
    assert transactions > 40
    assert overlaps == 0, f"{overlaps} request(s) reached the bus while another exchange was on it"
