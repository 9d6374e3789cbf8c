"""The device online rate report over the collector's HTTP API: meters online now per gateway from polling the
DL/T 645 simulator (one meter dead), edges persisted as they happen, availability over a past window computed from
stored edges, and bad windows refused."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_collector.app import create_app
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import service_auth
from shuidian_devstack.pytest_plugin import eventually
from shuidian_kit.db import create_engine
from shuidian_simulator import Simulator
from shuidian_simulator.estate import Estate

pytestmark = pytest.mark.integration


def estate(tag: str) -> Estate:
    def bus(g: str, meters: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
        return {
            "id": f"gw-{tag}-{g}",
            "buses": [
                {
                    "id": f"bus-{tag}-{g}",
                    "baud": 9600,
                    "reply_delay_ms": 5,
                    "meters": [
                        {"id": f"E-{tag}-{g}{n}", "address": address, "initial_register": "10", "faults": faults}
                        for n, (address, faults) in enumerate(meters)
                    ],
                }
            ],
        }

    return Estate.model_validate(
        {
            "seed": 3,
            "gateways": [
                bus("a", [("000000000001", []), ("000000000002", [{"kind": "offline"}])]),
                bus("b", [("000000000003", [])]),
            ],
        }
    )


def csv(sim: Simulator) -> str:
    lines = [
        "gateway_id,bus_id,host,port,protocol,baud,timeout_ms,retries,meter_id,address,model,utility,poll_interval_s"
    ]
    for gateway in sim.estate.gateways:
        for bus in gateway.buses:
            host, port = sim.bus_endpoint(bus.id)
            lines += [
                f"{gateway.id},{bus.id},{host},{port},dlt645,{bus.baud},200,0,{m.id},{m.address},dlt645-generic,"
                "electricity,1"
                for m in bus.meters
            ]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def collector(database_url: str, mqtt_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:8]}",
        mqtt_clean_session=True,
        registry_refresh_seconds=0.5,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://collector", auth=service_auth("collector")
        ) as client:
            yield client


async def test_online_now_edges_and_availability_over_a_window(database_url: str, mqtt_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    gw_a, gw_b = f"gw-{tag}-a", f"gw-{tag}-b"
    alive, dead, other = f"E-{tag}-a0", f"E-{tag}-a1", f"E-{tag}-b0"
    engine = create_engine(database_url)
    async with Simulator(estate(tag)) as sim, collector(database_url, mqtt_url) as http:
        imported = await http.post("/v1/registry/import", content=csv(sim), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text

        async def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/v1/reports/device-online-rate")).json()
            mine = {g["gateway_id"]: g for g in body["gateways"] if g["gateway_id"] in (gw_a, gw_b)}
            if len(mine) == 2 and (mine[gw_a]["online"], mine[gw_b]["online"]) == (1, 1):
                return body
            return None

        body = await eventually(settled, "the alive meters to be online and the dead one offline")
        rows = {g["gateway_id"]: g for g in body["gateways"]}
        assert (rows[gw_a]["meters"], rows[gw_a]["online"], rows[gw_a]["online_rate"]) == (2, 1, "0.5000")
        assert (rows[gw_b]["meters"], rows[gw_b]["online"], rows[gw_b]["online_rate"]) == (1, 1, "1.0000")
        assert body["total"]["meters"] >= 3  # other tests' meters may share the database
        assert body["total"]["online"] == sum(g["online"] for g in body["gateways"])

        # Edges are persisted as polling finds them: the dead meter offline, the others online.
        async with engine.connect() as conn:
            edges = (
                await conn.execute(
                    text("SELECT meter_id, online FROM collector.online_edges WHERE meter_id = ANY(:m) ORDER BY id"),
                    {"m": [alive, dead, other]},
                )
            ).all()
        assert {(e.meter_id, e.online) for e in edges} == {(alive, True), (dead, False), (other, True)}

        # The last 24 h (default): the dead meter offline, the alive one online, since each was first polled.
        recent = (await http.get("/v1/reports/device-online-rate", params={"gateway_id": gw_a})).json()
        availability = float(recent["gateways"][0]["availability"])
        assert 0 < availability < 1

        # One gateway only; a past window from stored edges: the alive meter online 18 h of 24. The day is a month
        # back, always inside the edges' retention.
        day = (datetime.now(UTC) - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO collector.online_edges (meter_id, gateway_id, online, at) VALUES "
                    "(:m, :g, true, :t0), (:m, :g, false, :t6), (:m, :g, true, :t12)"
                ),
                {"m": alive, "g": gw_a, "t0": day, "t6": day + timedelta(hours=6), "t12": day + timedelta(hours=12)},
            )
        window = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
        past = (await http.get("/v1/reports/device-online-rate", params={"gateway_id": gw_a, **window})).json()
        assert [g["gateway_id"] for g in past["gateways"]] == [gw_a]
        (a,) = past["gateways"]
        assert (a["availability"], a["observed_seconds"]) == ("0.7500", 86400.0)  # the others were not known yet
        assert past["total"]["availability"] == "0.7500"
        assert datetime.fromisoformat(past["start"]) == day
        b = (await http.get("/v1/reports/device-online-rate", params={"gateway_id": gw_b, **window})).json()
        assert b["gateways"][0]["availability"] is None  # nothing observed in that window

        for params in (
            {"start": window["end"], "end": window["start"]},
            {"start": (day - timedelta(days=367)).isoformat(), "end": window["start"]},
            {"start": day.replace(tzinfo=None).isoformat()},  # naive
            {"end": "yesterday"},
        ):
            refused = await http.get("/v1/reports/device-online-rate", params=params)
            assert refused.status_code in (400, 422), (params, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
        for gateway in (gw_a, gw_b):
            await http.delete(f"/v1/gateways/{gateway}")
    await engine.dispose()
