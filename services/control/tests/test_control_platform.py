"""Control through the real collector and the DL/T 645 simulator (the whole platform in-process): an exhausted
account is tripped and confirmed by the meter; a tenant closing the relay by hand is re-tripped by reconcile; a
stuck relay ends failed, with the meter's answer on record and a CommandUpdate for alarm; commands the collector
refuses (unsupported, rejected) fail at once and are never sent again. 保电 switches the meter's own keep-power
mode; lifting it trips an exhausted household once, after the meter confirms the mode off."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import text

from shuidian_devstack.platform import platform
from shuidian_devstack.seed import AccountSeed, BusSeed, MeterSeed, seed
from shuidian_kit.db import create_engine
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

        # A parameter the meter's model does not have: the collector answers unsupported without touching the wire,
        # control fails the command at once (no retries, no reconcile) and alarm hears of it like any failure.
        body = {
            "meter_id": good,
            "kind": "parameter_write",
            "parameters": {"name": "load_limit_kw", "value": "1.5"},
            "reason": "unsupported check",
        }
        issued = await p.internal.post(f"{control}/v1/commands", json=body)
        assert issued.status_code in (200, 201, 202), issued.text

        async def unsupported() -> dict[str, Any] | None:
            rows = [r for r in await commands(good) if r["kind"] == "parameter_write"]
            return rows[0] if rows and rows[0]["state"] == "failed" else None

        refused = await eventually(unsupported, "the unsupported parameter write to fail")
        assert refused["detail"].startswith("unsupported"), refused["detail"]
        assert "load_limit_kw" in refused["detail"]
        await eventually(
            lambda: any(
                u.command_id == uuid.UUID(refused["command_id"]) and u.state.value == "failed" for u in seen_updates
            ),
            "a failed CommandUpdate for the unsupported command",
        )
        await asyncio.sleep(2.5)  # several ticks and reconcile sweeps: nothing is sent again
        events = (await p.internal.get(f"{control}/v1/commands/{refused['command_id']}")).json()["events"]
        assert [e["state"] for e in events].count("sent") == 1
        assert "result:unsupported" in [e["state"] for e in events]
        assert not [e for e in events if e["state"] == "result:failed"]

        # A value the meter cannot take (two decimals at most): the collector rejects it before writing anything,
        # and control fails it at once instead of retrying it until the TTL.
        rejected_id = str(uuid.uuid4())
        body = {
            "meter_id": good,
            "kind": "parameter_write",
            "parameters": {"name": "alarm_money_1", "value": "10.005"},
            "reason": "rejected check",
            "command_id": rejected_id,
        }
        issued = await p.internal.post(f"{control}/v1/commands", json=body)
        assert issued.status_code in (200, 201, 202), issued.text

        async def rejected() -> dict[str, Any] | None:
            command: dict[str, Any] = (await p.internal.get(f"{control}/v1/commands/{rejected_id}")).json()
            return command if command["state"] == "failed" else None

        refusal = await eventually(rejected, "the rejected parameter write to fail")
        assert refusal["detail"].startswith("rejected"), refusal["detail"]
        assert "does not fit alarm_money_1" in refusal["detail"]
        await asyncio.sleep(2.5)  # several ticks and reconcile sweeps: nothing is sent again
        events = (await p.internal.get(f"{control}/v1/commands/{rejected_id}")).json()["events"]
        assert [e["state"] for e in events].count("sent") == 1
        assert "result:rejected" in [e["state"] for e in events]
        assert not [e for e in events if e["state"] == "result:failed"]
        # The trips (control code 1C) went out on the bus; no write (14) did, from either refused command.
        codes = {f.lstrip(b"\xfe")[8] for _, d, f in sim.wire_log(bus) if d == "rx"}
        assert 0x1C in codes, codes
        assert 0x14 not in codes, codes
        listener.cancel()


async def test_keep_power_switches_the_meters_own_mode_and_a_lift_trips_once_after_the_mode_is_off(
    database_url: str, mqtt_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    kept, guarded, bus = f"E-{tag}-1", f"E-{tag}-2", f"bus-{tag}"
    account, other = f"R-{tag}-1", f"R-{tag}-2"
    address = BrokerAddress.parse(mqtt_url)
    engine = create_engine(database_url)
    async with (
        Simulator(estate(bus, [kept, guarded])) as sim,
        platform(database_url, mqtt_url, instance=f"kp-{tag}", overrides={"control": CONTROL}) as p,
        aiomqtt.Client(address.host, address.port, identifier=f"billing-{tag}") as billing,
    ):
        host, port = sim.bus_endpoint(bus)
        meters = tuple(
            MeterSeed(m, a, "dlt645-generic", "electricity", acc, poll_interval_s=1)
            for m, a, acc in zip((kept, guarded), ADDRESSES, (account, other), strict=True)
        )
        accounts = [AccountSeed(a, "household", Decimal("1000.00")) for a in (account, other)]
        await seed(
            p.internal, p.urls, [BusSeed(bus, f"gw-{bus}", host, port, "dlt645", 9600, meters)], accounts, tariffs=False
        )
        control = p.urls["control"]

        async def commands(meter_id: str) -> list[dict[str, Any]]:
            response = await p.internal.get(f"{control}/v1/commands", params={"meter_id": meter_id})
            rows: list[dict[str, Any]] = response.json()
            return list(reversed(rows))  # oldest first

        async def shadow(meter_id: str) -> dict[str, Any]:
            response = await p.internal.get(f"{control}/v1/meters/{meter_id}/shadow")
            view: dict[str, Any] = response.json() if response.status_code == 200 else {}
            return view

        async def balance(kind: BalanceEventKind, level: BalanceLevel, sequence: int) -> None:
            event = BalanceEvent(
                source="billing-test",
                account_id=account,
                kind=kind,
                level=level,
                balance=Decimal("-0.10") if level is BalanceLevel.EXHAUSTED else Decimal("5.00"),
                sequence=sequence,
                meters=(MeterRef(meter_id=kept, utility=Utility.ELECTRICITY),),
            )
            await billing.publish(topics.balance(account), event.model_dump_json().encode(), qos=1)

        async def level() -> str | None:
            async with engine.connect() as conn:
                found: str | None = (
                    await conn.execute(
                        text("SELECT level FROM control.account_balance_levels WHERE account_id = :a"), {"a": account}
                    )
                ).scalar_one_or_none()
                return found

        # Billing tells control which meter the household has; then an operator sets 保电.
        await balance(BalanceEventKind.CHANGED, BalanceLevel.OK, 1_000_000)
        await eventually(lambda: level(), "control to learn the household's meter")
        response = await p.internal.put(
            f"{control}/v1/keep-power/households/{account}",
            json={"reason": "medical", "note": "oxygen"},
        )
        assert response.status_code == 204, response.text

        async def mode_confirmed(kind: str) -> dict[str, Any] | None:
            rows = [r for r in await commands(kept) if r["kind"] == kind]
            return rows[-1] if rows and rows[-1]["state"] == "confirmed" else None

        await eventually(lambda: mode_confirmed("keep_power_on"), "KEEP_POWER_ON confirmed by the meter")
        assert sim.meter(kept).keep_power
        view = await eventually(
            lambda: _if(shadow(kept), lambda v: v.get("reported_keep_power") is True), "the shadow to report it"
        )
        assert view["desired_keep_power"] is True

        # Exhausted under 保电: no trip. Then 保电 is lifted: mode off first, confirmed, then exactly one trip.
        await balance(BalanceEventKind.EXHAUSTED, BalanceLevel.EXHAUSTED, 1_000_001)
        await eventually(lambda: _if(level(), lambda v: v == "exhausted"), "control to take the exhaustion")
        # (Reconcile may send the mode again: a poll taken before the command can be published after its result.)
        assert {r["kind"] for r in await commands(kept)} == {"keep_power_on"}
        lifted = await p.internal.delete(f"{control}/v1/keep-power/households/{account}", params={"reason": "reviewed"})
        assert lifted.status_code == 204, lifted.text

        async def trip_confirmed() -> dict[str, Any] | None:
            rows = [r for r in await commands(kept) if r["kind"] == "trip"]
            return rows[-1] if rows and rows[-1]["state"] == "confirmed" else None

        trip = await eventually(trip_confirmed, "the trip confirmed after the lift")
        assert sim.meter(kept).relay_open
        assert not sim.meter(kept).keep_power
        await eventually(
            lambda: _if(
                shadow(kept), lambda v: (v.get("reported_relay"), v.get("reported_keep_power")) == ("open", False)
            ),
            "the meter's report of the new state",
        )
        rows = await commands(kept)
        kinds = [r["kind"] for r in rows]
        assert kinds.count("trip") == 1
        assert set(kinds) == {"keep_power_on", "keep_power_off", "trip"}
        assert max(i for i, k in enumerate(kinds) if k == "keep_power_on") < kinds.index("keep_power_off")
        assert kinds.index("keep_power_off") < kinds.index("trip")
        keep_off = next(r for r in rows if r["kind"] == "keep_power_off" and r["state"] == "confirmed")
        off_events = (await p.internal.get(f"{control}/v1/commands/{keep_off['command_id']}")).json()["events"]
        trip_events = (await p.internal.get(f"{control}/v1/commands/{trip['command_id']}")).json()["events"]
        # The trip waited (held) until the meter said its mode was off — the confirmed KEEP_POWER_OFF, or a reading
        # of the meter taken after it switched, whichever control got first — and was never refused.
        off_sent_at = next(datetime.fromisoformat(e["at"]) for e in off_events if e["state"] == "sent")
        trip_sent_at = next(datetime.fromisoformat(e["at"]) for e in trip_events if e["state"] == "sent")
        assert trip_sent_at > off_sent_at
        assert any(e["state"] == "pending" and "held" in e["detail"] for e in trip_events)
        results = [e["state"] for e in trip_events if e["state"].startswith("result:")]
        assert "result:confirmed" in results
        assert "result:failed" not in results
        assert trip["attempt"] == 1

        # The meter's own mode also stops a trip sent by mistake: the meter refuses it, control records its answer.
        for kind in ("keep_power_on", "trip"):
            body = {"meter_id": guarded, "kind": kind, "reason": "mode check"}
            issued = await p.internal.post(f"{control}/v1/commands", json=body)
            assert issued.status_code in (200, 201, 202), issued.text

            async def done(kind: str = kind) -> list[dict[str, Any]] | None:
                rows = await commands(guarded)
                return (
                    rows if rows and rows[-1]["kind"] == kind and rows[-1]["state"] in ("confirmed", "failed") else None
                )

            finished = await eventually(done, f"{kind} on the guarded meter to finish")
            assert finished[-1]["state"] == ("confirmed" if kind == "keep_power_on" else "failed")
        assert finished[-1]["response_frame"]
        assert not sim.meter(guarded).relay_open
    await engine.dispose()


async def _if(value: Any, condition: Callable[[Any], Any]) -> Any:
    """The awaited value when the condition holds, else None (for `eventually`)."""
    result = await value
    return result if condition(result) else None
