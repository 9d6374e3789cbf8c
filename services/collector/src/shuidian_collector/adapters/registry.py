"""The device registry in PostgreSQL (`collector.gateways`, `.buses`, `.meters`): read by the fleet, written by the API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_collector.domain.devices import (
    BusConfig,
    BusProtocol,
    EstateRow,
    GatewayConfig,
    MeterConfig,
    meter_problems,
    owns,
)
from shuidian_collector.errors import AddressTaken, InvalidDevice, NotFound
from shuidian_shared.messages import Utility

_RECORDS = {
    "gateway": "SELECT gateway_id, name, shard FROM collector.gateways WHERE gateway_id = :k",
    "bus": "SELECT bus_id, gateway_id, host, port, protocol, baud, timeout_ms, retries FROM collector.buses "
    "WHERE bus_id = :k",
    "meter": "SELECT meter_id, bus_id, address, model, utility, poll_interval_s, enabled FROM collector.meters "
    "WHERE meter_id = :k",
}


class Registry:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(
        self, index: int = 0, count: int = 1, only: frozenset[str] = frozenset()
    ) -> dict[str, GatewayConfig]:
        """The gateways this instance polls: those in `only` when it is given, otherwise its shard's."""
        async with self._engine.connect() as conn:
            gateways = (await conn.execute(text("SELECT gateway_id, shard FROM collector.gateways"))).all()
            buses = (await conn.execute(text("SELECT * FROM collector.buses ORDER BY bus_id"))).all()
            meters = (
                await conn.execute(text("SELECT * FROM collector.meters WHERE enabled ORDER BY bus_id, address"))
            ).all()
        by_bus: dict[str, list[MeterConfig]] = {}
        for m in meters:
            by_bus.setdefault(m.bus_id, []).append(
                MeterConfig(m.meter_id, m.address, m.model, Utility(m.utility), m.poll_interval_s)
            )
        by_gateway: dict[str, list[BusConfig]] = {}
        for b in buses:
            by_gateway.setdefault(b.gateway_id, []).append(
                BusConfig(
                    b.bus_id,
                    b.gateway_id,
                    b.host,
                    b.port,
                    BusProtocol(b.protocol),
                    b.baud,
                    b.timeout_ms,
                    b.retries,
                    tuple(by_bus.get(b.bus_id, ())),
                )
            )
        return {
            g.gateway_id: GatewayConfig(g.gateway_id, tuple(by_gateway.get(g.gateway_id, ())))
            for g in gateways
            if (g.gateway_id in only if only else owns(g.gateway_id, g.shard, index, count))
        }

    async def put_gateway(self, gateway_id: str, name: str, shard: int | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO collector.gateways (gateway_id, name, shard) VALUES (:g, :n, :s) "
                    "ON CONFLICT (gateway_id) DO UPDATE SET name = EXCLUDED.name, shard = EXCLUDED.shard"
                ),
                {"g": gateway_id, "n": name, "s": shard},
            )

    async def put_bus(self, bus: BusConfig) -> None:
        async with self._engine.begin() as conn:
            if (
                await conn.execute(
                    text("SELECT 1 FROM collector.gateways WHERE gateway_id = :g"), {"g": bus.gateway_id}
                )
            ).first() is None:
                raise NotFound(f"no gateway {bus.gateway_id}")
            await conn.execute(
                text(
                    "INSERT INTO collector.buses (bus_id, gateway_id, host, port, protocol, baud, timeout_ms, retries) "
                    "VALUES (:b, :g, :h, :p, :pr, :baud, :t, :r) ON CONFLICT (bus_id) DO UPDATE SET "
                    "gateway_id = EXCLUDED.gateway_id, host = EXCLUDED.host, port = EXCLUDED.port, "
                    "protocol = EXCLUDED.protocol, baud = EXCLUDED.baud, timeout_ms = EXCLUDED.timeout_ms, "
                    "retries = EXCLUDED.retries"
                ),
                {
                    "b": bus.bus_id,
                    "g": bus.gateway_id,
                    "h": bus.host,
                    "p": bus.port,
                    "pr": bus.protocol.value,
                    "baud": bus.baud,
                    "t": bus.timeout_ms,
                    "r": bus.retries,
                },
            )

    async def put_meter(self, bus_id: str, meter: MeterConfig) -> None:
        async with self._engine.begin() as conn:
            protocol = (
                await conn.execute(text("SELECT protocol FROM collector.buses WHERE bus_id = :b"), {"b": bus_id})
            ).scalar_one_or_none()
            if protocol is None:
                raise NotFound(f"no bus {bus_id}")
            problems = meter_problems(BusProtocol(protocol), meter.address, meter.model)
            if problems:
                raise InvalidDevice("; ".join(problems))
            await _guard_unique(conn, [(meter.meter_id, bus_id, meter.address)])
            await conn.execute(
                text(
                    "INSERT INTO collector.meters (meter_id, bus_id, address, model, utility, poll_interval_s) "
                    "VALUES (:m, :b, :a, :mo, :u, :i) ON CONFLICT (meter_id) DO UPDATE SET bus_id = EXCLUDED.bus_id, "
                    "address = EXCLUDED.address, model = EXCLUDED.model, utility = EXCLUDED.utility, "
                    "poll_interval_s = EXCLUDED.poll_interval_s"
                ),
                {
                    "m": meter.meter_id,
                    "b": bus_id,
                    "a": meter.address,
                    "mo": meter.model,
                    "u": meter.utility.value,
                    "i": meter.poll_interval_s,
                },
            )

    async def delete(self, kind: str, key: str) -> None:
        """Remove a gateway (with its buses and meters), a bus (with its meters) or a meter."""
        table, column = {
            "gateway": ("gateways", "gateway_id"),
            "bus": ("buses", "bus_id"),
            "meter": ("meters", "meter_id"),
        }[kind]
        async with self._engine.begin() as conn:
            deleted = await conn.execute(text(f"DELETE FROM collector.{table} WHERE {column} = :k"), {"k": key})
        if deleted.rowcount == 0:
            raise NotFound(f"no {kind} {key}")

    async def record(self, kind: str, key: str) -> dict[str, Any]:
        """The registered gateway, bus or meter `key`, as its row; NotFound when there is none."""
        sql = _RECORDS[kind]
        async with self._engine.connect() as conn:
            row = (await conn.execute(text(sql), {"k": key})).first()
        if row is None:
            raise NotFound(f"no {kind} {key}")
        return row._asdict()

    async def state(self, meter_id: str) -> dict[str, Any]:
        """A meter's last known device state; NotFound when it was never seen."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM collector.device_state WHERE meter_id = :m"), {"m": meter_id})
            ).first()
        if row is None:
            raise NotFound(f"no state for meter {meter_id}")
        return row._asdict()

    async def states(self, gateway_id: str | None, online: bool | None) -> list[dict[str, Any]]:
        """Device state of every meter (of one gateway, online or not when asked), by meter id."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM collector.device_state WHERE (CAST(:g AS text) IS NULL OR gateway_id = :g) "
                    "AND (CAST(:o AS boolean) IS NULL OR online = :o) ORDER BY meter_id"
                ),
                {"g": gateway_id, "o": online},
            )
            return [row._asdict() for row in rows]

    async def import_estate(self, rows: Iterable[EstateRow]) -> dict[str, int]:
        """Upsert gateways, buses and meters from validated rows in one transaction (all or nothing)."""
        rows = list(rows)
        gateways = sorted({r.gateway_id for r in rows})
        buses = {r.bus_id: r for r in rows}
        meters = [r for r in rows if r.meter_id]
        async with self._engine.begin() as conn:
            await _guard_unique(conn, [(r.meter_id, r.bus_id, r.address) for r in meters])
            await conn.execute(
                text(
                    "INSERT INTO collector.gateways (gateway_id, name) SELECT g, g FROM unnest(CAST(:g AS text[])) g "
                    "ON CONFLICT (gateway_id) DO NOTHING"
                ),
                {"g": gateways},
            )
            await conn.execute(
                text(
                    "INSERT INTO collector.buses (bus_id, gateway_id, host, port, protocol, baud, timeout_ms, retries) "
                    "SELECT * FROM unnest(CAST(:b AS text[]), CAST(:g AS text[]), CAST(:h AS text[]), "
                    "CAST(:p AS integer[]), CAST(:pr AS text[]), CAST(:baud AS integer[]), CAST(:t AS integer[]), "
                    "CAST(:r AS integer[])) ON CONFLICT (bus_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id, "
                    "host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol, baud = EXCLUDED.baud, "
                    "timeout_ms = EXCLUDED.timeout_ms, retries = EXCLUDED.retries"
                ),
                {
                    "b": list(buses),
                    "g": [r.gateway_id for r in buses.values()],
                    "h": [r.host for r in buses.values()],
                    "p": [r.port for r in buses.values()],
                    "pr": [r.protocol.value for r in buses.values()],
                    "baud": [r.baud for r in buses.values()],
                    "t": [r.timeout_ms for r in buses.values()],
                    "r": [r.retries for r in buses.values()],
                },
            )
            await conn.execute(
                text(
                    "INSERT INTO collector.meters (meter_id, bus_id, address, model, utility, poll_interval_s) "
                    "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:b AS text[]), CAST(:a AS text[]), "
                    "CAST(:mo AS text[]), CAST(:u AS text[]), CAST(:i AS integer[])) "
                    "ON CONFLICT (meter_id) DO UPDATE SET bus_id = EXCLUDED.bus_id, address = EXCLUDED.address, "
                    "model = EXCLUDED.model, utility = EXCLUDED.utility, poll_interval_s = EXCLUDED.poll_interval_s"
                ),
                {
                    "m": [r.meter_id for r in meters],
                    "b": [r.bus_id for r in meters],
                    "a": [r.address for r in meters],
                    "mo": [r.model for r in meters],
                    "u": [r.utility.value for r in meters],
                    "i": [r.poll_interval_s for r in meters],
                },
            )
        return {"gateways": len(gateways), "buses": len(buses), "meters": len(meters)}

    async def export_estate(self) -> list[EstateRow]:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT b.gateway_id, b.bus_id, b.host, b.port, b.protocol, b.baud, b.timeout_ms, b.retries, "
                    "m.meter_id, m.address, m.model, m.utility, m.poll_interval_s "
                    "FROM collector.buses b JOIN collector.meters m USING (bus_id) ORDER BY b.gateway_id, b.bus_id, m.address"
                )
            )
            return [
                EstateRow(
                    r.gateway_id,
                    r.bus_id,
                    r.host,
                    r.port,
                    BusProtocol(r.protocol),
                    r.baud,
                    r.timeout_ms,
                    r.retries,
                    r.meter_id,
                    r.address,
                    r.model,
                    Utility(r.utility),
                    r.poll_interval_s,
                )
                for r in result
            ]


async def _guard_unique(conn: AsyncConnection, meters: list[tuple[str, str, str]]) -> None:
    """Refuse a meter that would take an address another meter already has on the same bus."""
    taken = (
        await conn.execute(
            text(
                "SELECT n.m, e.meter_id, n.b, n.a FROM unnest(CAST(:m AS text[]), CAST(:b AS text[]), CAST(:a AS text[])) "
                "AS n(m, b, a) JOIN collector.meters e ON e.bus_id = n.b AND e.address = n.a AND e.meter_id <> n.m"
            ),
            {"m": [m for m, _, _ in meters], "b": [b for _, b, _ in meters], "a": [a for _, _, a in meters]},
        )
    ).all()
    if taken:
        first = taken[0]
        raise AddressTaken(
            f"address {first.a} on bus {first.b} already belongs to meter {first.meter_id} "
            f"(wanted by {first.m}; {len(taken)} clash(es) in all)"
        )
