"""Per-meter shadow: desired supply (intent, versioned) and reported supply (fact, newest report wins); the same
pair for the meter's own keep-power mode (desired follows the 保电 flags, reported is what the meter says)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_control.domain.decisions import Shadow
from shuidian_shared.messages import RelayState, Utility

_RETURNED = (
    "meter_id, utility, desired_supply, reported_supply, version, account_id, online, desired_keep_power, "
    "reported_keep_power"
)


@dataclass(frozen=True)
class ShadowRow:
    """A locked shadow row as the service reasons over it."""

    meter_id: str
    utility: Utility
    desired: RelayState | None
    reported: RelayState | None
    version: int
    account_id: str | None
    online: bool | None
    desired_keep_power: bool | None = None
    reported_keep_power: bool | None = None

    @property
    def shadow(self) -> Shadow:
        """The pure core's view."""
        return Shadow(self.desired, self.reported, self.version)


async def lock(
    conn: AsyncConnection,
    meter_id: str,
    *,
    utility: Utility | None = None,
    account_id: str | None = None,
    assumed: Utility | None = None,
) -> ShadowRow:
    """Create the meter's shadow if needed and lock it for this transaction (serialises decisions per meter).

    `utility` is a fact (from billing) and is stored; `assumed` only classifies a meter control has never seen.
    """
    row = (
        await conn.execute(
            text(
                "INSERT INTO control.shadows (meter_id, utility, account_id) "
                "VALUES (:m, coalesce(:u, :assumed, 'electricity'), :a) "
                "ON CONFLICT (meter_id) DO UPDATE SET utility = coalesce(:u, control.shadows.utility), "
                "account_id = coalesce(:a, control.shadows.account_id) "
                f"RETURNING {_RETURNED}"
            ),
            {
                "m": meter_id,
                "u": utility.value if utility else None,
                "assumed": assumed.value if assumed else None,
                "a": account_id,
            },
        )
    ).one()
    return _shadow_row(row)


async def lock_all(
    conn: AsyncConnection, meter_ids: Iterable[str], *, assumed: Utility | None = None
) -> dict[str, ShadowRow]:
    """`lock` for many meters in one statement, in meter order (the order every path locks in: no deadlocks)."""
    ids = sorted(set(meter_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        text(
            "INSERT INTO control.shadows (meter_id, utility) "
            "SELECT m, coalesce(:assumed, 'electricity') FROM unnest(CAST(:ids AS text[])) AS m ORDER BY m "
            "ON CONFLICT (meter_id) DO UPDATE SET utility = control.shadows.utility "
            f"RETURNING {_RETURNED}"
        ),
        {"ids": ids, "assumed": assumed.value if assumed else None},
    )
    locked = {r.meter_id: _shadow_row(r) for r in rows}
    return {m: locked[m] for m in ids}


def _shadow_row(row: Row[Any]) -> ShadowRow:
    return ShadowRow(
        meter_id=row.meter_id,
        utility=Utility(row.utility),
        desired=RelayState(row.desired_supply) if row.desired_supply else None,
        reported=RelayState(row.reported_supply) if row.reported_supply else None,
        version=row.version,
        account_id=row.account_id,
        online=row.online,
        desired_keep_power=row.desired_keep_power,
        reported_keep_power=row.reported_keep_power,
    )


async def set_desired(conn: AsyncConnection, meter_id: str, supply: RelayState | None) -> int:
    """Record a new intent; returns the new version (every intent gets one, so older results can be told apart)."""
    version: int = (
        await conn.execute(
            text(
                "UPDATE control.shadows SET desired_supply = :d, version = version + 1, updated_at = now() "
                "WHERE meter_id = :m RETURNING version"
            ),
            {"m": meter_id, "d": supply.value if supply else None},
        )
    ).scalar_one()
    return version


async def set_desired_keep_power(conn: AsyncConnection, meter_id: str, keep_power: bool | None) -> None:
    """Record the keep-power mode the meter should be in (it follows the 保电 flags); None: no wish (a meter that
    cannot take the mode)."""
    await conn.execute(
        text("UPDATE control.shadows SET desired_keep_power = :k, updated_at = now() WHERE meter_id = :m"),
        {"m": meter_id, "k": keep_power},
    )


async def trip_waits_for_keep_power_off(conn: AsyncConnection, meter_id: str) -> bool:
    """A trip waits while the meter's keep-power mode is being switched off and the meter still reports it on.

    The meter refuses trips in keep-power mode, so a trip sent before the switch-off is confirmed would fail.
    """
    waits: bool | None = (
        await conn.execute(
            text(
                "SELECT desired_keep_power IS FALSE AND reported_keep_power IS TRUE FROM control.shadows "
                "WHERE meter_id = :m"
            ),
            {"m": meter_id},
        )
    ).scalar_one_or_none()
    return bool(waits)


async def report(
    conn: AsyncConnection,
    meter_id: str,
    supply: RelayState | None,
    at: datetime,
    *,
    online: bool | None = None,
    gateway_id: str | None = None,
    utility: Utility | None = None,
    keep_power: bool | None = None,
) -> bool:
    """Record what the meter reported at `at`; an older report than the one stored is ignored. True if applied.

    None leaves a field as it was (a report that says nothing about it)."""
    applied = (
        await conn.execute(
            text(
                "INSERT INTO control.shadows (meter_id, reported_supply, reported_at, online, gateway_id, utility, "
                "reported_keep_power) VALUES (:m, :r, :t, :o, :g, coalesce(:u, 'electricity'), :k) "
                "ON CONFLICT (meter_id) DO UPDATE SET "
                "reported_supply = coalesce(EXCLUDED.reported_supply, control.shadows.reported_supply), "
                "reported_keep_power = coalesce(EXCLUDED.reported_keep_power, control.shadows.reported_keep_power), "
                "reported_at = EXCLUDED.reported_at, "
                "online = coalesce(EXCLUDED.online, control.shadows.online), "
                "gateway_id = coalesce(EXCLUDED.gateway_id, control.shadows.gateway_id), updated_at = now() "
                "WHERE control.shadows.reported_at IS NULL OR control.shadows.reported_at <= EXCLUDED.reported_at "
                "RETURNING meter_id"
            ),
            {
                "m": meter_id,
                "r": supply.value if supply else None,
                "t": at,
                "o": online,
                "g": gateway_id,
                "u": utility.value if utility else None,
                "k": keep_power,
            },
        )
    ).first()
    return applied is not None
