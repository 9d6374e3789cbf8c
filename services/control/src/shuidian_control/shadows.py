"""Per-meter supply shadow: desired (intent, versioned) and reported (fact, newest report wins)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_control.decisions import Shadow
from shuidian_shared.messages import RelayState, Utility


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
                "RETURNING meter_id, utility, desired_supply, reported_supply, version, account_id, online"
            ),
            {
                "m": meter_id,
                "u": utility.value if utility else None,
                "assumed": assumed.value if assumed else None,
                "a": account_id,
            },
        )
    ).one()
    return ShadowRow(
        meter_id=row.meter_id,
        utility=Utility(row.utility),
        desired=RelayState(row.desired_supply) if row.desired_supply else None,
        reported=RelayState(row.reported_supply) if row.reported_supply else None,
        version=row.version,
        account_id=row.account_id,
        online=row.online,
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


async def report(
    conn: AsyncConnection,
    meter_id: str,
    supply: RelayState | None,
    at: datetime,
    *,
    online: bool | None = None,
    gateway_id: str | None = None,
    utility: Utility | None = None,
) -> bool:
    """Record what the meter reported at `at`; an older report than the one stored is ignored. True if applied."""
    applied = (
        await conn.execute(
            text(
                "INSERT INTO control.shadows (meter_id, reported_supply, reported_at, online, gateway_id, utility) "
                "VALUES (:m, :r, :t, :o, :g, coalesce(:u, 'electricity')) ON CONFLICT (meter_id) DO UPDATE SET "
                "reported_supply = coalesce(EXCLUDED.reported_supply, control.shadows.reported_supply), "
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
            },
        )
    ).first()
    return applied is not None
