"""Commission a simulated estate into the platform through the services' own APIs (idempotent)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import httpx


@dataclass(frozen=True)
class MeterSeed:
    meter_id: str
    address: str
    model: str
    utility: str  # electricity | water
    account_id: str
    poll_interval_s: int = 10


@dataclass(frozen=True)
class BusSeed:
    bus_id: str
    gateway_id: str
    host: str
    port: int
    protocol: str
    baud: int
    meters: tuple[MeterSeed, ...]


@dataclass(frozen=True)
class AccountSeed:
    account_id: str
    name: str
    opening_credit: Decimal


@dataclass(frozen=True)
class RoomSeed:
    """A room of the estate and the household living in it; its account is the room code."""

    code: str  # e.g. A101: building A, floor 1, room 01
    building: str
    floor: int
    area_m2: Decimal
    household_size: int
    tenant_id: str
    tenant_name: str
    phone: str

    @property
    def room_id(self) -> str:
        return f"room-{self.code}"


@dataclass(frozen=True)
class PremisesSeed:
    estate_id: str
    name: str
    rooms: tuple[RoomSeed, ...]
    move_in: str = "2026-01-01"


TARIFFS = {"electricity": "0.60", "water": "4.50"}  # CNY per kWh / m³, demo flat prices


async def _ok(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} → {response.status_code}: {response.text}"
        )


async def seed(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    buses: list[BusSeed],
    accounts: list[AccountSeed],
    *,
    tariffs: bool = True,
    premises: PremisesSeed | None = None,
) -> None:
    """Commission buses, meters and accounts; with `premises`, also the estate's rooms, tenants and
    leases (meters then belong to rooms, not directly to accounts) and where alarm finds each meter."""
    collector, billing = urls["collector"], urls["billing"]
    if premises is not None:
        await _ok(await client.put(f"{billing}/v1/estates/{premises.estate_id}", json={"name": premises.name}))
    for utility, price in TARIFFS.items() if tariffs else ():
        await _ok(
            await client.put(
                f"{billing}/v1/tariffs/{utility}",
                json={"unit_price": price, "effective_from": "2020-01-01T00:00:00+08:00"},
            )
        )
    for account in accounts:
        estate = {"estate_id": premises.estate_id} if premises else {}
        await _ok(
            await client.put(f"{billing}/v1/accounts/{account.account_id}", json={"name": account.name, **estate})
        )
        if account.opening_credit > 0:
            # The key makes the opening credit a one-off across restarts of `make run`.
            await _ok(
                await client.post(
                    f"{billing}/v1/accounts/{account.account_id}/topups",
                    json={"amount": str(account.opening_credit), "channel": "cash", "reference": "opening credit"},
                    headers={"Idempotency-Key": f"opening-credit-{account.account_id}"},
                )
            )
    rooms = {room.code: room for room in premises.rooms} if premises else {}
    if premises is not None:
        await _seed_premises(client, billing, premises)
    for gateway_id in sorted({b.gateway_id for b in buses}):
        await _ok(await client.put(f"{collector}/v1/gateways/{gateway_id}", json={"name": gateway_id}))
    for bus in buses:
        await _ok(
            await client.put(
                f"{collector}/v1/buses/{bus.bus_id}",
                json={
                    "gateway_id": bus.gateway_id,
                    "host": bus.host,
                    "port": bus.port,
                    "protocol": bus.protocol,
                    "baud": bus.baud,
                },
            )
        )
        for meter in bus.meters:
            await _ok(
                await client.put(
                    f"{collector}/v1/meters/{meter.meter_id}",
                    json={
                        "bus_id": bus.bus_id,
                        "address": meter.address,
                        "model": meter.model,
                        "utility": meter.utility,
                        "poll_interval_s": meter.poll_interval_s,
                    },
                )
            )
            room = rooms.get(meter.account_id)
            if room:  # installed in the room: billed to whoever leases it
                url, body = f"{billing}/v1/rooms/{room.room_id}/meters/{meter.meter_id}", {"utility": meter.utility}
            else:
                url = f"{billing}/v1/meters/{meter.meter_id}/binding"
                body = {"account_id": meter.account_id, "utility": meter.utility}
            await _ok(await client.put(url, json=body))
    if premises is not None:
        targets = [
            {
                "meter_id": meter.meter_id,
                "gateway_id": bus.gateway_id,
                "account_id": meter.account_id,
                "model": meter.model,
                "estate": premises.estate_id,
                "building": room.building,
                "room": room.code,
                "tenant_id": room.tenant_id,
            }
            for bus in buses
            for meter in bus.meters
            if (room := rooms.get(meter.account_id))
        ]
        if targets:
            await _ok(await client.put(f"{urls['alarm']}/v1/targets", json={"targets": targets}))


async def _seed_premises(client: httpx.AsyncClient, billing: str, premises: PremisesSeed) -> None:
    """Buildings, floors, rooms, tenants and one lease per room, all idempotent PUTs."""
    for building in sorted({r.building for r in premises.rooms}):
        await _ok(
            await client.put(
                f"{billing}/v1/buildings/{premises.estate_id}.{building}",
                json={"estate_id": premises.estate_id, "name": f"{building} 栋"},
            )
        )
    for building, floor in sorted({(r.building, r.floor) for r in premises.rooms}):
        await _ok(
            await client.put(
                f"{billing}/v1/floors/{premises.estate_id}.{building}.{floor}",
                json={"building_id": f"{premises.estate_id}.{building}", "level": floor},
            )
        )
    for room in premises.rooms:
        await _ok(
            await client.put(
                f"{billing}/v1/rooms/{room.room_id}",
                json={
                    "floor_id": f"{premises.estate_id}.{room.building}.{room.floor}",
                    "code": room.code,
                    "area_m2": str(room.area_m2),
                    "household_size": room.household_size,
                },
            )
        )
        await _ok(
            await client.put(
                f"{billing}/v1/tenants/{room.tenant_id}", json={"name": room.tenant_name, "phone": room.phone}
            )
        )
        await _ok(
            await client.put(
                f"{billing}/v1/leases/lease-{room.code}",
                json={
                    "tenant_id": room.tenant_id,
                    "room_id": room.room_id,
                    "move_in": premises.move_in,
                    "account_id": room.code,
                },
            )
        )


DEMO_PASSWORD = "shuidian-demo"  # dev stack only: every demo user signs in with it
DEMO_STAFF = {
    "admin": "system_admin",
    "manager": "estate_manager",
    "cashier": "cashier",
    "maintenance": "maintenance",
    "finance": "finance",
}


async def seed_users(client: httpx.AsyncClient, gateway: str, staff_key: str, premises: PremisesSeed) -> None:
    """Demo sign-ins: one user per staff role for the estate, and one tenant user per room (its code)."""
    users: list[dict[str, object]] = [
        {"username": name, "role": role, "estates": [premises.estate_id]} for name, role in DEMO_STAFF.items()
    ]
    users += [{"username": room.code, "role": "tenant", "tenant_id": room.tenant_id} for room in premises.rooms]
    for user in users:
        response = await client.post(
            f"{gateway}/v1/users",
            json={**user, "password": DEMO_PASSWORD},
            headers={"Authorization": f"Bearer {staff_key}"},
        )
        if response.status_code != 409:  # already there from an earlier start
            await _ok(response)
