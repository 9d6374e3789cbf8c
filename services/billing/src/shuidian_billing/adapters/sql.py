"""SQL pieces the billing core's adapters share: who pays for a meter when, the flush lock, the
tariff table's stamp, and the reading path's driver-level reads and array literals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

FLUSH_LOCK = 7_234_001  # advisory lock: billing transactions share it, the flush takes it alone
# Changes whenever a tariff version is added or a future one replaced (ids are never reused).
TARIFF_STAMP = "count(*)::text || ':' || max(tariff_id)::text"


# One query answers "who pays for this meter when": direct account bindings, room bindings
# intersected with the room's leases, and estate common meters. NULL bounds are open.
# It also says what picks the tariff plan (docs/tariffs.md): the estate and building of the meter
# and its customer class — the binding's, else the lease's, else the room's; a common meter is 公共.
OWNERS_SQL = """
SELECT b.meter_id, b.utility,
       greatest(b.valid_from, l.starts_at) AS valid_from,
       least(b.valid_to, l.ends_at) AS valid_to,
       coalesce(b.account_id, l.account_id, 'common:' || b.estate_id) AS account_id,
       coalesce(r.household_size, 1) AS household_size,
       coalesce(b.estate_id, bl.estate_id, ac.estate_id) AS estate_id,
       bl.building_id,
       coalesce(b.customer_class, l.customer_class, r.customer_class,
                CASE WHEN b.estate_id IS NOT NULL THEN 'common' END, 'residential') AS customer_class
FROM billing.meter_bindings b
LEFT JOIN billing.leases l ON l.room_id = b.room_id
     AND (b.valid_to IS NULL OR l.starts_at < b.valid_to)
     AND (l.ends_at IS NULL OR b.valid_from IS NULL OR l.ends_at > b.valid_from)
LEFT JOIN billing.rooms r ON r.room_id = b.room_id
LEFT JOIN billing.floors fl ON fl.floor_id = r.floor_id
LEFT JOIN billing.buildings bl ON bl.building_id = fl.building_id
LEFT JOIN billing.accounts ac ON ac.account_id = b.account_id
WHERE (b.room_id IS NULL OR l.lease_id IS NOT NULL) AND {where}
"""


async def fetch(conn: AsyncConnection, sql: str, *args: object) -> list[Any]:
    """Rows straight from the driver, in the connection's transaction: the reading path's large reads
    skip SQLAlchemy's row objects. Parameters are positional ($1, $2 …)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        # SQLAlchemy opens its transaction on the first statement it runs: make sure that happened.
        await conn.execute(text("SELECT 1"))
    rows: list[Any] = await driver.fetch(sql, *args)
    return rows


class Stamps:
    """Timestamp columns as array literals; one write repeats the same hours and sample times a lot."""

    def __init__(self) -> None:
        self._text: dict[datetime | None, str] = {None: "NULL"}

    def array(self, values: Sequence[datetime | None]) -> str:
        text_of = self._text
        out: list[str] = []
        for value in values:
            found = text_of.get(value)
            if found is None:
                assert value is not None  # None is always found: NULL
                found = text_of[value] = value.isoformat()
            out.append(found)
        return "{" + ",".join(out) + "}"


def decimals(value: Any) -> dict[str, Decimal]:
    found = json.loads(value) if isinstance(value, str) else value
    return {k: Decimal(v) for k, v in found.items()}


def unnest(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"CAST(CAST(:{name} AS text) AS {kind}[])" for name, kind in columns)
