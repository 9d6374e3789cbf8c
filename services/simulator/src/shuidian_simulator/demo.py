"""The demo estate: buildings of rooms, each with a prepaid DL/T 645 electricity meter and a
CJ/T 188 water meter, one gateway per building with a bus for each utility."""

from __future__ import annotations

from decimal import Decimal

from shuidian_simulator.estate import BusSpec, Estate, GatewaySpec, MeterSpec, Profile, Protocol


def demo_estate(buildings: int = 2, rooms_per_building: int = 20, seed: int = 2026, acceleration: int = 360) -> Estate:
    """Room codes like 'A101'; meter ids 'E-A101' / 'W-A101'."""
    gateways = []
    for b in range(buildings):
        block = chr(ord("A") + b)
        rooms = [f"{block}{(r // 4 + 1)}{r % 4 + 1:02d}" for r in range(rooms_per_building)]
        electricity = tuple(
            MeterSpec(
                id=f"E-{room}",
                address=f"{b + 1:04d}{i + 1:08d}",
                model="dlt645-prepaid",
                utility="electricity",
                profile=Profile.VACANT if i % 10 == 9 else Profile.RESIDENTIAL,
                initial_register=Decimal(1000 + 37 * i),
                prepaid_money=Decimal("100.00"),
            )
            for i, room in enumerate(rooms)
        )
        water = tuple(
            MeterSpec(
                id=f"W-{room}",
                address=f"{b + 1:06d}{i + 1:08d}",
                model="cjt188-water",
                utility="water",
                initial_register=Decimal(100 + 3 * i),
            )
            for i, room in enumerate(rooms)
        )
        gateways.append(
            GatewaySpec(
                id=f"gw-{block.lower()}",
                buses=(
                    BusSpec(id=f"gw-{block.lower()}-e", protocol=Protocol.DLT645, baud=9600, meters=electricity),
                    BusSpec(id=f"gw-{block.lower()}-w", protocol=Protocol.CJT188, baud=2400, meters=water),
                ),
            )
        )
    return Estate(seed=seed, acceleration=Decimal(acceleration), gateways=tuple(gateways))
