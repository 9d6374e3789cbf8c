"""The device registry: gateways, the RS-485 buses behind them and the meters on each bus."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_kit.errors import NotFound
from shuidian_shared.messages import Utility


class BusProtocol(StrEnum):
    DLT645 = "dlt645"
    DLT645_1997 = "dlt645-1997"
    CJT188 = "cjt188"
    MODBUS_RTU = "modbus-rtu"
    MODBUS_TCP = "modbus-tcp"


@dataclass(frozen=True)
class MeterConfig:
    meter_id: str
    address: str
    model: str
    utility: Utility
    poll_interval_s: int


@dataclass(frozen=True)
class BusConfig:
    bus_id: str
    gateway_id: str
    host: str
    port: int
    protocol: BusProtocol
    baud: int
    timeout_ms: int
    retries: int
    meters: tuple[MeterConfig, ...]


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    buses: tuple[BusConfig, ...]


def owns(gateway_id: str, shard: int | None, index: int, count: int) -> bool:
    """A gateway belongs to the configured shard, or to the instance its id hashes to."""
    if count == 1:
        return True
    chosen = shard if shard is not None else zlib.crc32(gateway_id.encode()) % count
    return chosen % count == index


class Registry:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self, index: int = 0, count: int = 1) -> dict[str, GatewayConfig]:
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
            if owns(g.gateway_id, g.shard, index, count)
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
            if (
                await conn.execute(text("SELECT 1 FROM collector.buses WHERE bus_id = :b"), {"b": bus_id})
            ).first() is None:
                raise NotFound(f"no bus {bus_id}")
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
