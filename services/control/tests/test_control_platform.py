"""Control through the real collector and the DL/T 645 simulator (the whole platform in-process): an exhausted
account is tripped and confirmed by the meter; a tenant closing the relay by hand is re-tripped by reconcile; a
stuck relay ends failed, with the meter's answer on record and a CommandUpdate for alarm."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiomqtt
import pytest

from shuidian_devstack.platform import platform
from shuidian_devstack.seed import AccountSeed, BusSeed, MeterSeed, seed
from shuidian_kit.mqtt import BrokerAddress
from shuidian_shared import topics
from shuidian_shared.messages import BalanceEvent, BalanceEventKind, BalanceLevel, CommandUpdate, MeterRef, Utility
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate, Fault, FaultKind

pytestmark = pytest.mark.e2e
ADDRESSES = ("000000006101", "000000006102")


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def estate(bus: str, meters: list[str]) -> Estate:
    return Estate.model_validate(
        {
            "seed": 11,
            "gateways": [
                {
                    "id": f"gw-{bus}",
                    "buses": [
                        {
                            "id": bus,
                            "port": 0,
                            "protocol": "dlt645",
                            "baud": 9600,
                            "reply_delay_ms": 5,
                            "meters": [
                                {
                                    "id": meter_id,
                                    "address": address,
                                    "model": "dlt645-generic",
                                    "utility": "electricity",
                                    "profile": "residential",
                                    "initial_register": "100.00",
                                }
                                for meter_id, address in zip(meters, ADDRESSES, strict=True)
                            ],
                        }
                    ],
                }
            ],
        }
    )


CONTROL = {
    # Wall-clock independent: this test is about the device path, windows are tested elsewhere.
    "nights_start": None,
    "nights_end": None,
    "protect_weekends": False,
    "protect_holidays": False,
    "tick_seconds": 0.2,
    "reconcile_interval_seconds": 1.0,
    "reconcile_sweep_seconds": 1.0,
}


async def test_trip_reconcile_and_stuck_relay_through_the_collector_and_simulator(
    database_url: str, mqtt_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    good, stuck, bus = f"E-{tag}-1", f"E-{tag}-2", f"bus-{tag}"
    account_good, account_stuck = f"R-{tag}-1", f"R-{tag}-2"
    address = BrokerAddress.parse(mqtt_url)
    async with (
        Simulator(estate(bus, [good, stuck])) as sim,
        platform(database_url, mqtt_url, instance=f"ctl-{tag}", overrides={"control": CONTROL}) as p,
        aiomqtt.Client(address.host, address.port, identifier=f"billing-{tag}") as billing,
    ):
        host, port = sim.bus_endpoint(bus)
        sim.set_fault(stuck, Fault(kind=FaultKind.STUCK_RELAY))
        await billing.subscribe(topics.ALL_COMMAND_UPDATES, qos=1)
        seen_updates: list[CommandUpdate] = []

        async def listen() -> None:
            async for message in billing.messages:
                assert isinstance(message.payload, bytes)
                seen_updates.append(CommandUpdate.model_validate_json(message.payload))

        listener = asyncio.create_task(listen())
        meters = tuple(
            MeterSeed(m, a, "dlt645-generic", "electricity", acc, poll_interval_s=1)
            for m, a, acc in zip((good, stuck), ADDRESSES, (account_good, account_stuck), strict=True)
        )
        accounts = [AccountSeed(a, "household", Decimal("1000.00")) for a in (account_good, account_stuck)]
        await seed(
            p.internal, p.urls, [BusSeed(bus, f"gw-{bus}", host, port, "dlt645", 9600, meters)], accounts, tariffs=False
        )
        control = p.urls["control"]

        async def commands(meter_id: str) -> list[dict[str, Any]]:
            response = await p.internal.get(f"{control}/v1/commands", params={"meter_id": meter_id})
            rows: list[dict[str, Any]] = response.json()
            return rows

        # Billing announces exhaustion for both households (a sequence above anything billing itself has sent).
        for account, meter_id in ((account_good, good), (account_stuck, stuck)):
            event = BalanceEvent(
                source="billing-test",
                account_id=account,
                kind=BalanceEventKind.EXHAUSTED,
                level=BalanceLevel.EXHAUSTED,
                balance=Decimal("-0.10"),
                sequence=1_000_000,
                meters=(MeterRef(meter_id=meter_id, utility=Utility.ELECTRICITY),),
            )
            await billing.publish(topics.balance(account), event.model_dump_json().encode(), qos=1)

        async def trip_confirmed(meter_id: str, n: int) -> bool:
            rows = await commands(meter_id)
            return len(rows) >= n and rows[0]["kind"] == "trip" and rows[0]["state"] == "confirmed"

        await eventually(lambda: trip_confirmed(good, 1), "the trip confirmed by the meter")
        assert sim.meter(good).relay_open

        # The tenant closes the relay by hand; the collector reads it closed; reconcile trips it again.
        sim.meter(good).set_relay(False)
        await eventually(lambda: trip_confirmed(good, 2), "reconcile to trip the meter again")
        assert sim.meter(good).relay_open
        rows = await commands(good)
        assert [r["origin"] for r in reversed(rows)][:2] == ["billing", "reconcile"]

        # The stuck meter acknowledges but its relay never moves: failed, answer frame on record, update published.
        async def failed() -> dict[str, Any] | None:
            rows = await commands(stuck)
            return rows[-1] if rows and rows[-1]["state"] == "failed" else None

        failure = await eventually(failed, "the stuck relay's trip to fail")
        assert failure["response_frame"]
        assert not sim.meter(stuck).relay_open
        await eventually(
            lambda: any(u.meter_id == stuck and u.state.value == "failed" for u in seen_updates),
            "a failed CommandUpdate for alarm",
        )
        listener.cancel()
