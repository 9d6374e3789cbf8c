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
) -> None:
    collector, billing = urls["collector"], urls["billing"]
    for utility, price in TARIFFS.items() if tariffs else ():
        await _ok(
            await client.put(
                f"{billing}/v1/tariffs/{utility}",
                json={"unit_price": price, "effective_from": "2020-01-01T00:00:00+08:00"},
            )
        )
    for account in accounts:
        await _ok(await client.put(f"{billing}/v1/accounts/{account.account_id}", json={"name": account.name}))
        if account.opening_credit > 0:
            # The key makes the opening credit a one-off across restarts of `make run`.
            await _ok(
                await client.post(
                    f"{billing}/v1/accounts/{account.account_id}/topups",
                    json={"amount": str(account.opening_credit), "channel": "cash", "reference": "opening credit"},
                    headers={"Idempotency-Key": f"opening-credit-{account.account_id}"},
                )
            )
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
            await _ok(
                await client.put(
                    f"{billing}/v1/meters/{meter.meter_id}/binding",
                    json={"account_id": meter.account_id, "utility": meter.utility},
                )
            )
