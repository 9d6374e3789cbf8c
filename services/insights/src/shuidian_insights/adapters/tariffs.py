"""The tariff in force per utility, read from billing's `/v1/tariffs/{utility}/versions` and kept for a
while (tariffs change rarely; billing owns them)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
from pydantic import ValidationError

from shuidian_insights.errors import Unavailable
from shuidian_shared.contracts.insights import TariffSpec


class Tariffs:
    def __init__(self, billing: httpx.AsyncClient | None, *, ttl_seconds: float = 300.0) -> None:
        self._billing = billing
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, TariffSpec | None]] = {}

    def put(self, utility: str, tariff: TariffSpec | None) -> None:
        """Set a utility's tariff directly (tests and benchmarks without billing)."""
        self._cache[utility] = (float("inf"), tariff)

    async def current(self, utility: str) -> TariffSpec | None:
        """The version in force now, None if billing has none or it cannot be priced per whole hour."""
        cached = self._cache.get(utility)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        if self._billing is None:
            return None
        try:
            response = await self._billing.get(f"/v1/tariffs/{utility}/versions")
        except httpx.HTTPError as err:
            raise Unavailable(f"billing is unreachable for the {utility} tariff: {err}") from err
        if response.status_code != 200:
            raise Unavailable(f"billing answered {response.status_code} for the {utility} tariff")
        now = datetime.now(UTC)
        versions = [v for v in response.json() if datetime.fromisoformat(v["effective_from"]) <= now]
        tariff = None
        if versions:
            try:
                tariff = TariffSpec.model_validate({"components": versions[-1]["components"]})
            except ValidationError:
                tariff = None  # e.g. time-of-use segments off the hour: no money claimed
        self._cache[utility] = (time.monotonic() + self._ttl, tariff)
        return tariff
