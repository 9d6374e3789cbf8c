"""Stored policy: estate policies, building membership, keep-power (保电) flags, operator no-cut-off holds.

Buildings are registered here as labelled lists of meter ids (with the estate they belong to); how stored rows
become the policy decided with is `domain.policies`. Every change is written to the policy log with who and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_control.domain.policies import (
    ALL_ESTATES,
    DEFAULT_ESTATE,
    EstatePolicy,
    EstateSettings,
    KeepPower,
    KeepPowerReason,
    MeterContext,
    MeterSupply,
    estate_policy,
    longest_hold,
)
from shuidian_control.domain.windows import OperatorHold
from shuidian_control.errors import NotFound
from shuidian_control.settings import ControlSettings
from shuidian_shared.messages import CommandKind, Utility


class PolicyStore:
    """Reads policy for decisions (set-based) and writes it for the API."""

    def __init__(self, engine: AsyncEngine, settings: ControlSettings) -> None:
        self._engine = engine
        self._tz = ZoneInfo(settings.timezone)
        self._default = EstateSettings(
            nights_start=settings.nights_start if settings.nights_end else None,
            nights_end=settings.nights_end if settings.nights_start else None,
            weekends=settings.protect_weekends,
            holidays=settings.protect_holidays,
            restore=settings.restore_command,
            prepaid_water=settings.prepaid_water,
        )

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    # --- reads for decisions -------------------------------------------------------------------------------------

    async def contexts(self, conn: AsyncConnection, meter_ids: Iterable[str]) -> dict[str, MeterContext]:
        """Policy context of each meter, in four queries whatever the number of meters."""
        ids = sorted(set(meter_ids))
        rows = (
            await conn.execute(
                text(
                    "SELECT m.meter_id, coalesce(s.utility, 'electricity') AS utility, s.account_id, "
                    "coalesce(b.estate_id, :d) AS estate_id, kh.reason AS kp_reason, kh.note AS kp_note "
                    "FROM unnest(CAST(:ids AS text[])) AS m(meter_id) "
                    "LEFT JOIN control.shadows s ON s.meter_id = m.meter_id "
                    "LEFT JOIN control.building_meters bm ON bm.meter_id = m.meter_id "
                    "LEFT JOIN control.buildings b ON b.building_id = bm.building_id "
                    "LEFT JOIN control.keep_power kh ON kh.scope = 'household' AND kh.subject = s.account_id"
                ),
                {"ids": ids, "d": DEFAULT_ESTATE},
            )
        ).all()
        estates = await self._estate_policies(conn, {r.estate_id for r in rows})
        return {
            r.meter_id: MeterContext(
                meter_id=r.meter_id,
                estate_id=r.estate_id,
                account_id=r.account_id,
                supply=MeterSupply(
                    Utility(r.utility),
                    KeepPower(KeepPowerReason(r.kp_reason), r.kp_note) if r.kp_reason else None,
                ),
                policy=estates[r.estate_id],
            )
            for r in rows
        }

    async def _estate_policies(self, conn: AsyncConnection, estate_ids: set[str]) -> dict[str, EstatePolicy]:
        ids = sorted(estate_ids | {DEFAULT_ESTATE})
        stored = {
            r.estate_id: EstateSettings(
                r.nights_start, r.nights_end, r.weekends, r.holidays, CommandKind(r.restore), r.prepaid_water
            )
            for r in await conn.execute(
                text("SELECT * FROM control.estate_policies WHERE estate_id = ANY(:ids)"), {"ids": ids}
            )
        }
        keep = {
            r.subject: KeepPower(KeepPowerReason(r.reason), r.note)
            for r in await conn.execute(
                text(
                    "SELECT subject, reason, note FROM control.keep_power WHERE scope = 'estate' AND subject = ANY(:ids)"
                ),
                {"ids": ids},
            )
        }
        holds = {
            r.estate_id: OperatorHold(r.reason, r.until)
            for r in await conn.execute(
                text("SELECT estate_id, reason, until FROM control.cutoff_holds WHERE estate_id = ANY(:ids)"),
                {"ids": [*ids, ALL_ESTATES]},
            )
        }
        return {
            estate: estate_policy(stored.get(estate, stored.get(DEFAULT_ESTATE, self._default)), keep.get(estate),
                                  longest_hold(holds.get(estate), holds.get(ALL_ESTATES)), self._tz)
            for estate in ids
        }  # fmt: skip

    # --- estate policies -----------------------------------------------------------------------------------------

    async def estate_policy(self, estate_id: str) -> EstateSettings:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT * FROM control.estate_policies WHERE estate_id = ANY(:ids) ORDER BY estate_id = :e DESC"
                    ),
                    {"ids": [estate_id, DEFAULT_ESTATE], "e": estate_id},
                )
            ).first()
        if row is None:
            return self._default
        return EstateSettings(
            row.nights_start, row.nights_end, row.weekends, row.holidays, CommandKind(row.restore), row.prepaid_water
        )

    async def put_estate_policy(self, conn: AsyncConnection, estate_id: str, value: EstateSettings, actor: str) -> None:
        await conn.execute(
            text(
                "INSERT INTO control.estate_policies (estate_id, nights_start, nights_end, weekends, holidays, restore, "
                "prepaid_water, updated_by) VALUES (:e, :ns, :ne, :w, :h, :r, :p, :who) ON CONFLICT (estate_id) DO UPDATE "
                "SET nights_start = EXCLUDED.nights_start, nights_end = EXCLUDED.nights_end, weekends = EXCLUDED.weekends, "
                "holidays = EXCLUDED.holidays, restore = EXCLUDED.restore, prepaid_water = EXCLUDED.prepaid_water, "
                "updated_by = EXCLUDED.updated_by, updated_at = now()"
            ),
            {
                "e": estate_id,
                "ns": value.nights_start,
                "ne": value.nights_end,
                "w": value.weekends,
                "h": value.holidays,
                "r": value.restore.value,
                "p": value.prepaid_water,
                "who": actor,
            },
        )
        await self.log(conn, f"estate:{estate_id}", "policy", repr(value), actor)

    # --- buildings -----------------------------------------------------------------------------------------------

    async def put_building(
        self, conn: AsyncConnection, building_id: str, estate_id: str | None, meter_ids: list[str], actor: str
    ) -> None:
        """Register a building's meters (replacing its previous list); a meter belongs to one building."""
        await conn.execute(
            text(
                "INSERT INTO control.buildings (building_id, estate_id, updated_by) VALUES (:b, :e, :who) "
                "ON CONFLICT (building_id) DO UPDATE SET estate_id = EXCLUDED.estate_id, "
                "updated_by = EXCLUDED.updated_by, updated_at = now()"
            ),
            {"b": building_id, "e": estate_id, "who": actor},
        )
        await conn.execute(text("DELETE FROM control.building_meters WHERE building_id = :b"), {"b": building_id})
        await conn.execute(
            text(
                "INSERT INTO control.building_meters (meter_id, building_id) "
                "SELECT unnest(CAST(:ms AS text[])), :b ON CONFLICT (meter_id) DO UPDATE SET building_id = :b"
            ),
            {"ms": sorted(set(meter_ids)), "b": building_id},
        )
        await self.log(conn, f"building:{building_id}", "members", f"estate={estate_id} meters={len(meter_ids)}", actor)

    async def building(self, building_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM control.buildings WHERE building_id = :b"), {"b": building_id})
            ).first()
            if row is None:
                raise NotFound(f"no building {building_id}")
            meters = await self.building_meters(conn, building_id)
        return {**row._asdict(), "meters": meters}

    async def building_members(self, building_id: str) -> list[str]:
        """A building's registered meters, in meter order (empty for an unknown building)."""
        async with self._engine.connect() as conn:
            return await self.building_meters(conn, building_id)

    async def building_meters(self, conn: AsyncConnection, building_id: str) -> list[str]:
        rows = await conn.execute(
            text("SELECT meter_id FROM control.building_meters WHERE building_id = :b ORDER BY meter_id"),
            {"b": building_id},
        )
        return [r.meter_id for r in rows]

    async def estate_meters(self, conn: AsyncConnection, estate_id: str) -> list[str]:
        """Meters control knows in an estate (the default estate: known meters in no building)."""
        if estate_id == DEFAULT_ESTATE:
            sql = (
                "SELECT s.meter_id FROM control.shadows s LEFT JOIN control.building_meters bm USING (meter_id) "
                "LEFT JOIN control.buildings b USING (building_id) WHERE coalesce(b.estate_id, :e) = :e"
            )
        else:
            sql = (
                "SELECT bm.meter_id FROM control.building_meters bm JOIN control.buildings b USING (building_id) "
                "WHERE b.estate_id = :e"
            )
        return [r.meter_id for r in await conn.execute(text(sql), {"e": estate_id})]

    async def subject_meters(self, conn: AsyncConnection, scope: str, subject: str) -> list[str]:
        """The meters a 保电 flag covers: a household's (by account) or an estate's."""
        if scope == "household":
            rows = await conn.execute(
                text("SELECT meter_id FROM control.shadows WHERE account_id = :a"), {"a": subject}
            )
            return [r.meter_id for r in rows]
        return await self.estate_meters(conn, subject)

    # --- keep-power and holds ------------------------------------------------------------------------------------

    async def set_keep_power(
        self, conn: AsyncConnection, scope: str, subject: str, reason: KeepPowerReason, note: str, actor: str
    ) -> None:
        await conn.execute(
            text(
                "INSERT INTO control.keep_power (scope, subject, reason, note, set_by) VALUES (:s, :k, :r, :n, :who) "
                "ON CONFLICT (scope, subject) DO UPDATE SET reason = EXCLUDED.reason, note = EXCLUDED.note, "
                "set_by = EXCLUDED.set_by, set_at = now()"
            ),
            {"s": scope, "k": subject, "r": reason.value, "n": note, "who": actor},
        )
        await self.log(conn, f"{scope}:{subject}", "keep_power_set", f"{reason.value}: {note}", actor)

    async def clear_keep_power(self, conn: AsyncConnection, scope: str, subject: str, why: str, actor: str) -> bool:
        cleared = (
            await conn.execute(
                text("DELETE FROM control.keep_power WHERE scope = :s AND subject = :k RETURNING subject"),
                {"s": scope, "k": subject},
            )
        ).first()
        if cleared is not None:
            await self.log(conn, f"{scope}:{subject}", "keep_power_cleared", why, actor)
        return cleared is not None

    async def keep_power(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(text("SELECT * FROM control.keep_power ORDER BY scope, subject"))
            return [r._asdict() for r in rows]

    async def set_hold(
        self, conn: AsyncConnection, estate_id: str, reason: str, until: datetime | None, actor: str
    ) -> None:
        await conn.execute(
            text(
                "INSERT INTO control.cutoff_holds (estate_id, reason, until, set_by) VALUES (:e, :r, :u, :who) "
                "ON CONFLICT (estate_id) DO UPDATE SET reason = EXCLUDED.reason, until = EXCLUDED.until, "
                "set_by = EXCLUDED.set_by, set_at = now()"
            ),
            {"e": estate_id, "r": reason, "u": until, "who": actor},
        )
        await self.log(conn, f"estate:{estate_id}", "hold_set", f"{reason} (until {until})", actor)

    async def clear_hold(self, conn: AsyncConnection, estate_id: str, why: str, actor: str) -> bool:
        cleared = (
            await conn.execute(
                text("DELETE FROM control.cutoff_holds WHERE estate_id = :e RETURNING estate_id"), {"e": estate_id}
            )
        ).first()
        if cleared is not None:
            await self.log(conn, f"estate:{estate_id}", "hold_cleared", why, actor)
        return cleared is not None

    async def holds(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(text("SELECT * FROM control.cutoff_holds ORDER BY estate_id"))
            return [r._asdict() for r in rows]

    @staticmethod
    async def log(conn: AsyncConnection, subject: str, action: str, detail: str, actor: str) -> None:
        await conn.execute(
            text("INSERT INTO control.policy_log (subject, action, detail, actor) VALUES (:s, :a, :d, :who)"),
            {"s": subject, "a": action, "d": detail, "who": actor},
        )

    async def policy_log(self, subject: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT * FROM control.policy_log WHERE CAST(:s AS text) IS NULL OR subject = :s "
                    "ORDER BY id DESC LIMIT :n"
                ),
                {"s": subject, "n": limit},
            )
            return [r._asdict() for r in rows]
