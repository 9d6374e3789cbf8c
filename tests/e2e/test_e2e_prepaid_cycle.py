"""The whole platform over real sockets, the real broker and real PostgreSQL: a simulated
DL/T 645 meter behind a TCP gateway runs a household out of credit, the relay is tripped by the
exact 1C frame, a top-up through the gateway restores supply, and every step is visible."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from shuidian_devstack.platform import Platform, platform
from shuidian_devstack.pytest_plugin import eventually
from shuidian_devstack.seed import AccountSeed, BusSeed, MeterSeed, seed
from shuidian_protocols import dlt645
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.e2e
ADDRESS = "000000004101"


async def get(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(path, params=params)
    return response.json() if response.status_code == 200 else None


async def rows(client: httpx.AsyncClient, path: str, **params: str) -> list[Any] | None:
    """The rows of the first page of a listing (None when it is refused)."""
    page = await get(client, path, **params)
    return None if page is None else list(page["items"])


def estate(meter_id: str) -> Estate:
    return Estate.model_validate(
        {
            "seed": 7,
            "acceleration": 1800,  # half an hour of household consumption per second
            "gateways": [
                {
                    "id": f"gw-{meter_id}",
                    "buses": [
                        {
                            "id": f"bus-{meter_id}",
                            "port": 0,
                            "protocol": "dlt645",
                            "baud": 9600,
                            "reply_delay_ms": 20,
                            "meters": [
                                {
                                    "id": meter_id,
                                    "address": ADDRESS,
                                    "model": "dlt645-generic",
                                    "utility": "electricity",
                                    "profile": "residential",
                                    "initial_register": "1000.00",
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    )


async def test_exhaustion_trips_the_relay_and_a_top_up_restores_it(database_url: str, mqtt_url: str) -> None:
    meter_id = f"E-{uuid.uuid4().hex[:6]}"
    account = f"R-{uuid.uuid4().hex[:6]}"
    sim_estate = estate(meter_id)
    async with (
        Simulator(sim_estate) as sim,
        platform(
            database_url,
            mqtt_url,
            # Consumption runs 1800× faster than real time: widen the physical-plausibility limit to match.
            # No protected windows: CI runs at night and at weekends too (deferral has its own tests).
            overrides={
                "billing": {"flush_interval_seconds": 1.0, "max_plausible_kwh_per_hour": Decimal(60 * 1800)},
                "control": {
                    "nights_start": None,
                    "nights_end": None,
                    "protect_weekends": False,
                    "protect_holidays": False,
                },
            },
        ) as p,
    ):
        host, port = sim.bus_endpoint(f"bus-{meter_id}")
        await prepare(p, account, meter_id, host, port)
        staff = p.staff

        # 1. readings flow: the collector reads the meter, billing prices the deltas.
        await eventually(lambda: _available_below(staff, account, Decimal("6.00")), "billing to price the first deltas")
        # 2. below the warning levels alarm raises a low-balance alarm.
        low = await eventually(
            lambda: rows(staff, "/v1/alarms", source_id=account, alarm_type="balance_low", state="active"),
            "a low-balance alarm",
        )
        assert len(low) == 1
        # 3. exhausted → control issues exactly one trip, the collector confirms it by reading back.
        trip = await eventually(lambda: _command(staff, meter_id, "trip", "confirmed"), "a confirmed trip", 60)
        assert sim.meter(meter_id).relay_open
        # The exact bytes on the wire: DL/T 645 1C with N1 = 1A (trip), expiry = the command's TTL in meter time.
        expiry = (
            datetime.fromisoformat(trip["expires_at"])
            .astimezone(ZoneInfo("Asia/Shanghai"))
            .replace(tzinfo=None, microsecond=0)
        )
        expected = dlt645.relay_control_request(ADDRESS, dlt645.RelayCommand.TRIP, expiry)
        sent = [
            frame for _, direction, frame in sim.wire_log(f"bus-{meter_id}") if direction == "rx" and frame == expected
        ]
        assert len(sent) == 1, "the trip frame was not on the wire exactly once"
        assert dlt645.decode_frame(expected).data[8] == 0x1A  # N1 after password (4) and operator (4)
        # 4. the next reading reports the open relay.
        await eventually(lambda: _relay(staff, meter_id, "open"), "the device state to report the relay open")
        exhausted = await rows(staff, "/v1/alarms", source_id=account, alarm_type="balance_exhausted", state="active")
        assert exhausted is not None
        assert len(exhausted) == 1

        # 5. a top-up through the gateway (idempotent) restores supply.
        key = f"topup-{uuid.uuid4().hex}"
        paid = await staff.post(
            f"/v1/accounts/{account}/topups",
            json={"amount": "50.00", "channel": "cash"},
            headers={"Idempotency-Key": key},
        )
        assert paid.status_code == 201, paid.text
        replay = await staff.post(
            f"/v1/accounts/{account}/topups",
            json={"amount": "50.00", "channel": "cash"},
            headers={"Idempotency-Key": key},
        )
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["payment_id"] == paid.json()["payment_id"]
        await eventually(lambda: _command(staff, meter_id, "direct_close", "confirmed"), "a confirmed close", 60)
        assert not sim.meter(meter_id).relay_open
        await eventually(lambda: _relay(staff, meter_id, "closed"), "the device state to report the relay closed")
        await eventually(lambda: _none_active(staff, account, "balance_exhausted"), "the exhausted alarm to clear")
        commands = await rows(staff, "/v1/commands", meter_id=meter_id)
        assert commands is not None
        assert [c["kind"] for c in reversed(commands)] == ["trip", "direct_close"]
        view = await get(staff, f"/v1/accounts/{account}")
        assert Decimal(view["balance"]) > Decimal("40")


async def prepare(p: Platform, account: str, meter_id: str, host: str, port: int) -> None:
    internal = p.internal
    billing = p.urls["billing"]
    await internal.put(
        f"{billing}/v1/tariffs/electricity", json={"unit_price": "1.00", "effective_from": "2020-01-01T00:00:00+08:00"}
    )
    await seed(
        internal,
        p.urls,
        [
            BusSeed(
                f"bus-{meter_id}",
                f"gw-{meter_id}",
                host,
                port,
                "dlt645",
                9600,
                (MeterSeed(meter_id, ADDRESS, "dlt645-generic", "electricity", account, poll_interval_s=1),),
            )
        ],
        [AccountSeed(account, "e2e household", Decimal("8.00"))],
        tariffs=False,
    )
    response = await internal.put(
        f"{billing}/v1/accounts/{account}", json={"name": "e2e household", "low_1": "6.00", "low_2": "3.00"}
    )
    assert response.status_code == 204, response.text


async def _available_below(staff: httpx.AsyncClient, account: str, limit: Decimal) -> bool:
    view = await get(staff, f"/v1/accounts/{account}")
    return view is not None and Decimal(view["available"]) < limit


async def _command(staff: httpx.AsyncClient, meter_id: str, kind: str, state: str) -> dict[str, Any] | None:
    commands = await rows(staff, "/v1/commands", meter_id=meter_id) or []
    matching = [c for c in commands if c["kind"] == kind]
    assert len(matching) <= 1, f"more than one {kind}: {matching}"
    return matching[0] if matching and matching[0]["state"] == state else None


async def _relay(staff: httpx.AsyncClient, meter_id: str, relay: str) -> bool:
    view = await get(staff, f"/v1/meters/{meter_id}/state")
    return view is not None and bool(view["relay"] == relay)


async def _none_active(staff: httpx.AsyncClient, account: str, alarm_type: str) -> bool:
    active: list[Any] | None = await rows(staff, "/v1/alarms", source_id=account, alarm_type=alarm_type, state="active")
    return active == []
