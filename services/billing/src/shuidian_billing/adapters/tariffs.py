"""Tariff versions: load them into pricers, add one (a new price never re-prices the past), list them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.tariff_config import COMPONENTS, FlatIn, Pricer, StoredVersion, to_domain
from shuidian_billing.errors import BillingError, Conflict
from shuidian_shared.messages import Utility


async def load_pricers(conn: AsyncConnection) -> dict[Utility, Pricer]:
    """A pricer per utility over every stored tariff version."""
    versions: dict[Utility, list[StoredVersion]] = {u: [] for u in Utility}
    rows = await conn.execute(
        text("SELECT tariff_id, utility, unit_price, components, effective_from FROM billing.tariffs")
    )
    for row in rows:
        utility = Utility(row.utility)
        components = (
            COMPONENTS.validate_python(row.components)
            if row.components is not None
            else (FlatIn(unit_price=row.unit_price),)
        )
        domain = to_domain(row.tariff_id, utility, row.effective_from, components)
        versions[utility].append(StoredVersion(row.tariff_id, components, domain))
    return {u: Pricer(u, v) for u, v in versions.items()}


class TariffAdmin:
    """Adds and lists tariff versions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def set_tariff(self, utility: Utility, unit_price: Decimal, effective_from: datetime) -> None:
        """A flat price from `effective_from` on (kept for the original endpoint)."""
        if unit_price < 0:
            raise BillingError("price must not be negative", code="invalid_price", status_code=422)
        await self.put_tariff_version(utility, effective_from, (FlatIn(unit_price=unit_price),))

    async def put_tariff_version(
        self, utility: Utility, effective_from: datetime, components: Sequence[Any]
    ) -> dict[str, Any]:
        """Add a tariff version; a new price never re-prices the past.

        The first version of a utility may start in the past (commissioning). After that, a version
        asked to start in the past takes effect now; a version already in force cannot change (an
        identical replay is a no-op, 409 otherwise). Returns the id and the effective instant.
        """
        try:
            to_domain(0, utility, effective_from, components)
        except BillingDomainError as err:
            raise BillingError(str(err), code="invalid_tariff", status_code=422) from err
        flat = [c for c in components if isinstance(c, FlatIn)]
        unit_price = flat[0].unit_price if len(components) == 1 and len(flat) == 1 and flat[0].name == "flat" else None
        stored = None if unit_price is not None else json.dumps(COMPONENTS.dump_python(tuple(components), mode="json"))
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"tariff:{utility.value}"})
            existing = (
                await conn.execute(
                    text(
                        "SELECT tariff_id, unit_price, components, effective_from FROM billing.tariffs "
                        "WHERE utility = :u AND effective_from = :e"
                    ),
                    {"u": utility.value, "e": effective_from},
                )
            ).first()
            now = datetime.now(UTC)
            if existing is not None:
                same = (existing.unit_price, existing.components) == (
                    unit_price,
                    None if stored is None else json.loads(stored),
                )
                if same:
                    return {"tariff_id": int(existing.tariff_id), "effective_from": existing.effective_from}
                if effective_from <= now:
                    raise Conflict(
                        "a tariff version already in force cannot change (a new price never re-prices the past); "
                        "add a new version instead",
                        code="tariff_in_force",
                    )
                await conn.execute(text("DELETE FROM billing.tariffs WHERE tariff_id = :t"), {"t": existing.tariff_id})
            elif effective_from < now:
                commissioned = (
                    await conn.execute(
                        text("SELECT 1 FROM billing.tariffs WHERE utility = :u LIMIT 1"), {"u": utility.value}
                    )
                ).first()
                if commissioned is not None:
                    effective_from = now
            tariff_id = (
                await conn.execute(
                    text(
                        "INSERT INTO billing.tariffs (utility, unit_price, components, effective_from) "
                        "VALUES (:u, :p, CAST(:c AS jsonb), :e) RETURNING tariff_id"
                    ),
                    {"u": utility.value, "p": unit_price, "c": stored, "e": effective_from},
                )
            ).scalar_one()
        return {"tariff_id": int(tariff_id), "effective_from": effective_from}

    async def tariff_versions(self, utility: Utility) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            pricer = (await load_pricers(conn))[utility]
        return [
            {
                "tariff_id": v.tariff_id,
                "utility": utility,
                "effective_from": v.domain.effective_from,
                "components": COMPONENTS.dump_python(v.components, mode="json"),
            }
            for v in pricer.versions
        ]
