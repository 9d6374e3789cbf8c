"""The demo estate of `make run`: generated once by the simulator, kept in data/estate.json, and
turned into the commissioning data (buses, meters, accounts) the platform is seeded with."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from shuidian_devstack.seed import AccountSeed, BusSeed, MeterSeed, PremisesSeed, RoomSeed
from shuidian_simulator.demo import demo_estate
from shuidian_simulator.estate import Estate

# Opening credit per room cycles through these so the demo shows every balance level soon.
OPENING_CREDITS = (Decimal("6.00"), Decimal("30.00"), Decimal("60.00"), Decimal("120.00"))


def room_of(meter_id: str) -> str:
    """Meter ids are 'E-<room>' / 'W-<room>'; the household account is the room code."""
    return meter_id.split("-", 1)[1]


@dataclass(frozen=True)
class DemoEstate:
    path: Path
    estate: Estate

    @classmethod
    def load_or_create(cls, path: Path) -> DemoEstate:
        if path.exists():
            return cls(path, Estate.model_validate_json(path.read_text()))
        estate = demo_estate(buildings=2, rooms_per_building=20, seed=2026)
        path.write_text(estate.model_dump_json(indent=2))
        return cls(path, estate)

    @property
    def room_codes(self) -> list[str]:
        return sorted({room_of(m.id) for g in self.estate.gateways for b in g.buses for m in b.meters})

    @property
    def rooms(self) -> int:
        return len(self.room_codes)

    def buses(self, endpoints: dict[str, Any]) -> list[BusSeed]:
        """Buses with the endpoints the running simulator reported (bus id → {host, port}); a bus
        the simulator does not serve yet (no endpoint) is left out of commissioning."""
        result = []
        for gateway in self.estate.gateways:
            for bus in gateway.buses:
                endpoint = endpoints.get(bus.id)
                if endpoint is None:
                    continue
                result.append(
                    BusSeed(
                        bus_id=bus.id,
                        gateway_id=gateway.id,
                        host=endpoint["host"],
                        port=int(endpoint["port"]),
                        protocol=str(bus.protocol),
                        baud=bus.baud,
                        meters=tuple(
                            MeterSeed(m.id, m.address, m.model, str(m.utility), room_of(m.id)) for m in bus.meters
                        ),
                    )
                )
        return result

    def accounts(self) -> list[AccountSeed]:
        return [
            AccountSeed(room, f"房间 {room}", OPENING_CREDITS[i % len(OPENING_CREDITS)])
            for i, room in enumerate(self.room_codes)
        ]

    def premises(self) -> PremisesSeed:
        """One demo estate; room codes are <building letter><floor><two-digit room>, e.g. A101."""
        return PremisesSeed(
            estate_id="demo",
            name="示范公租房小区 · Demo estate",
            rooms=tuple(
                RoomSeed(
                    code=room,
                    building=room[0],
                    floor=int(room[1:-2]),
                    area_m2=Decimal(45 + 5 * (i % 4)),
                    household_size=1 + i % 4,
                    tenant_id=f"tenant-{room}",
                    tenant_name=f"租户 {room}",
                    phone=f"1380000{i:04d}",
                )
                for i, room in enumerate(self.room_codes)
            ),
        )
