"""Premises and people: estates → buildings → floors → rooms, tenants, leases (move-in / move-out),
meter ↔ room bindings (effective-dated), a whole estate from CSV, and a tenant's scope.

A lease is the household: it names the prepaid account that pays for the room's meters over
[move_in, move_out) in local dates. A meter bound to a room therefore bills whichever household
leased the room at each instant; a move-out, move-in, meter move or replacement splits a reading
interval between households pro rata by time.

Every change of a room's lease or meters queues its `RoomOccupancy` (retained, per room) in the
outbox in the same transaction (`occupancy.RoomOccupancies`, which also publishes dated transitions
as they come due and republishes every room on demand).

Creating a tenant or changing their phone (`put_tenant`, the CSV import) queues their `TenantContact` (retained,
per tenant) in the same transaction, so alarm texts the number billing holds now, not the one the tenant's last
settings save carried.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.accounts import Accounts
from shuidian_billing.adapters.occupancy import RoomOccupancies
from shuidian_billing.domain.estate_csv import RoomRow, parse_estate_csv
from shuidian_billing.domain.periods import CHINA_STANDARD_TIME
from shuidian_billing.errors import BillingError, Conflict, ImportRefused, NotFound
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import TenantContact, Utility

log = logging.getLogger(__name__)


def local_midnight(day: date) -> datetime:
    """UTC instant of the local start of `day` (Asia/Shanghai)."""
    return datetime.combine(day, time(), tzinfo=CHINA_STANDARD_TIME).astimezone(UTC)


class Premises:
    def __init__(
        self, engine: AsyncEngine, accounts: Accounts, occupancy: RoomOccupancies, outbox: Outbox, source: str
    ) -> None:
        self._engine = engine
        self._accounts = accounts
        self._occupancy = occupancy
        self._outbox = outbox
        self._source = source

    # --- the tree -------------------------------------------------------------------------------

    async def put_estate(self, estate_id: str, name: str, shared_balance: bool, shared_basis: str) -> None:
        async with self._engine.begin() as conn:
            current = (
                await conn.execute(
                    text("SELECT shared_balance FROM billing.estates WHERE estate_id = :e FOR UPDATE"), {"e": estate_id}
                )
            ).first()
            if current is not None and current.shared_balance != shared_balance:
                moved = (
                    await conn.execute(
                        text(
                            "SELECT 1 FROM billing.ledger_entries e JOIN billing.accounts a "
                            "ON e.ledger_account LIKE 'household:' || a.account_id || '%' WHERE a.estate_id = :e LIMIT 1"
                        ),
                        {"e": estate_id},
                    )
                ).first()
                if moved is not None:
                    raise Conflict(
                        "households of this estate already have ledger entries: the balance mode cannot change",
                        code="balance_mode_locked",
                    )
            await conn.execute(
                text(
                    "INSERT INTO billing.estates (estate_id, name, shared_balance, shared_basis) VALUES (:e, :n, :s, :b) "
                    "ON CONFLICT (estate_id) DO UPDATE SET name = EXCLUDED.name, shared_balance = EXCLUDED.shared_balance, "
                    "shared_basis = EXCLUDED.shared_basis"
                ),
                {"e": estate_id, "n": name, "s": shared_balance, "b": shared_basis},
            )

    async def put_building(self, building_id: str, estate_id: str, name: str) -> None:
        async with self._engine.begin() as conn:
            await self._require(conn, "estates", "estate_id", estate_id)
            await conn.execute(
                text(
                    "INSERT INTO billing.buildings (building_id, estate_id, name) VALUES (:b, :e, :n) "
                    "ON CONFLICT (building_id) DO UPDATE SET name = EXCLUDED.name, estate_id = EXCLUDED.estate_id"
                ),
                {"b": building_id, "e": estate_id, "n": name},
            )

    async def put_floor(self, floor_id: str, building_id: str, level: int) -> None:
        async with self._engine.begin() as conn:
            await self._require(conn, "buildings", "building_id", building_id)
            await self._unique(
                conn,
                "INSERT INTO billing.floors (floor_id, building_id, level) VALUES (:f, :b, :l) "
                "ON CONFLICT (floor_id) DO UPDATE SET building_id = EXCLUDED.building_id, level = EXCLUDED.level",
                {"f": floor_id, "b": building_id, "l": level},
                "the building already has a floor at that level",
            )

    async def put_room(self, room_id: str, floor_id: str, code: str, area_m2: Decimal, household_size: int) -> None:
        async with self._engine.begin() as conn:
            await self._require(conn, "floors", "floor_id", floor_id)
            await self._unique(
                conn,
                "INSERT INTO billing.rooms (room_id, floor_id, code, area_m2, household_size) VALUES (:r, :f, :c, :a, :h) "
                "ON CONFLICT (room_id) DO UPDATE SET floor_id = EXCLUDED.floor_id, code = EXCLUDED.code, "
                "area_m2 = EXCLUDED.area_m2, household_size = EXCLUDED.household_size",
                {"r": room_id, "f": floor_id, "c": code, "a": area_m2, "h": household_size},
                f"room code {code} is already used by another room",
            )

    async def put_tenant(self, tenant_id: str, name: str, phone: str) -> None:
        async with self._engine.begin() as conn:
            queued = await self._write_tenant(conn, tenant_id, name, phone)
        if queued:
            self._outbox.notify()

    async def _write_tenant(self, conn: AsyncConnection, tenant_id: str, name: str, phone: str) -> bool:
        """Create or update a tenant in the caller's transaction; a new tenant or a changed phone queues the
        tenant's `TenantContact` (retained) in the outbox. Whether one was queued (the caller wakes the outbox)."""
        before = (
            await conn.execute(
                text("SELECT phone FROM billing.tenants WHERE tenant_id = :t FOR UPDATE"), {"t": tenant_id}
            )
        ).first()
        # The database clock, read after the row lock: two changes of one tenant get times in commit order,
        # whichever replica made them (alarm keeps the newest).
        changed_at = (
            await conn.execute(
                text(
                    "INSERT INTO billing.tenants (tenant_id, name, phone) VALUES (:t, :n, :p) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name, phone = EXCLUDED.phone "
                    "RETURNING clock_timestamp()"
                ),
                {"t": tenant_id, "n": name, "p": phone},
            )
        ).scalar_one()
        if before is not None and before.phone == phone:
            return False  # a name change, or the same save again: nothing alarm needs
        contact = TenantContact(source=self._source, tenant_id=tenant_id, phone=phone or None, changed_at=changed_at)
        await self._outbox.add(conn, topics.tenant_contact(tenant_id), contact, retain=True)
        return True

    async def room(self, room_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT r.*, f.building_id, b.estate_id FROM billing.rooms r JOIN billing.floors f USING (floor_id) "
                        "JOIN billing.buildings b USING (building_id) WHERE r.room_id = :r"
                    ),
                    {"r": room_id},
                )
            ).first()
            if row is None:
                raise NotFound(f"no room {room_id}")
            leases = await conn.execute(
                text("SELECT * FROM billing.leases WHERE room_id = :r ORDER BY move_in"), {"r": room_id}
            )
            meters = await conn.execute(
                text(
                    "SELECT meter_id, utility, valid_from, valid_to FROM billing.meter_bindings WHERE room_id = :r "
                    "ORDER BY meter_id, valid_from"
                ),
                {"r": room_id},
            )
            return {
                **row._asdict(),
                "leases": [_lease_out(lease._asdict()) for lease in leases],
                "meters": [m._asdict() for m in meters],
            }

    # --- leases and meters ----------------------------------------------------------------------

    async def start_lease(
        self,
        lease_id: str,
        tenant_id: str,
        room_id: str,
        move_in: date,
        account_id: str | None,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """Move a household in: the lease and (unless named) its own prepaid account."""
        if conn is None:
            async with self._engine.begin() as own:
                result = await self.start_lease(lease_id, tenant_id, room_id, move_in, account_id, own)
            self._outbox.notify()
            return result
        await self._require(conn, "tenants", "tenant_id", tenant_id)
        room = (
            await conn.execute(
                text(
                    "SELECT r.room_id, r.code, b.estate_id FROM billing.rooms r JOIN billing.floors f USING (floor_id) "
                    "JOIN billing.buildings b USING (building_id) WHERE r.room_id = :r FOR UPDATE OF r"
                ),
                {"r": room_id},
            )
        ).first()
        if room is None:
            raise NotFound(f"no room {room_id}")
        existing = (
            await conn.execute(text("SELECT * FROM billing.leases WHERE lease_id = :l"), {"l": lease_id})
        ).first()
        account_id = account_id or lease_id
        if existing is not None:
            if (existing.tenant_id, existing.room_id, existing.move_in, existing.account_id) != (
                tenant_id,
                room_id,
                move_in,
                account_id,
            ):
                raise Conflict(f"lease {lease_id} exists with different terms", code="lease_exists")
            return _lease_out(existing._asdict())
        overlap = (
            await conn.execute(
                text(
                    "SELECT lease_id FROM billing.leases WHERE room_id = :r AND (move_out IS NULL OR move_out > :d) LIMIT 1"
                ),
                {"r": room_id, "d": move_in},
            )
        ).first()
        if overlap is not None:
            raise Conflict(
                f"room {room_id} is still leased under {overlap.lease_id} on {move_in}: move that household out first",
                code="lease_overlap",
            )
        tenant = (
            await conn.execute(text("SELECT name FROM billing.tenants WHERE tenant_id = :t"), {"t": tenant_id})
        ).one()
        if (
            await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
        ).first() is None:
            await self._accounts.put_account(
                account_id,
                f"{room.code} {tenant.name}",
                Decimal("20.00"),
                Decimal("5.00"),
                Decimal("0.00"),
                room.estate_id,
                conn,
            )
        row = {
            "lease_id": lease_id,
            "tenant_id": tenant_id,
            "room_id": room_id,
            "account_id": account_id,
            "move_in": move_in,
            "starts_at": local_midnight(move_in),
        }
        await conn.execute(
            text(
                "INSERT INTO billing.leases (lease_id, tenant_id, room_id, account_id, move_in, starts_at) "
                "VALUES (:lease_id, :tenant_id, :room_id, :account_id, :move_in, :starts_at)"
            ),
            row,
        )
        await self._occupancy.queue(conn, [room_id])
        return _lease_out({**row, "move_out": None, "ends_at": None})

    async def lease(self, lease_id: str) -> dict[str, Any]:
        """One lease with the estate of its room (what the gateway scopes lease operations by)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT l.*, b.estate_id FROM billing.leases l JOIN billing.rooms r USING (room_id) "
                        "JOIN billing.floors f USING (floor_id) JOIN billing.buildings b USING (building_id) "
                        "WHERE l.lease_id = :l"
                    ),
                    {"l": lease_id},
                )
            ).first()
        if row is None:
            raise NotFound(f"no lease {lease_id}")
        return {**_lease_out(row._asdict()), "estate_id": row.estate_id}

    async def end_lease(self, lease_id: str, move_out: date, conn: AsyncConnection | None = None) -> dict[str, Any]:
        """Move a household out: the room's meters stop billing its account from local midnight of `move_out`."""
        if conn is None:
            async with self._engine.begin() as own:
                result = await self.end_lease(lease_id, move_out, own)
            self._outbox.notify()
            return result
        lease = (
            await conn.execute(text("SELECT * FROM billing.leases WHERE lease_id = :l FOR UPDATE"), {"l": lease_id})
        ).first()
        if lease is None:
            raise NotFound(f"no lease {lease_id}")
        if lease.move_out is not None:
            if lease.move_out == move_out:
                return _lease_out(lease._asdict())
            raise Conflict(f"lease {lease_id} already ended on {lease.move_out}", code="lease_ended")
        if move_out <= lease.move_in:
            raise BillingError("move-out must be after move-in", code="invalid_lease", status_code=422)
        await conn.execute(
            text("UPDATE billing.leases SET move_out = :d, ends_at = :e WHERE lease_id = :l"),
            {"d": move_out, "e": local_midnight(move_out), "l": lease_id},
        )
        await self._occupancy.queue(conn, [lease.room_id])
        updated = (await conn.execute(text("SELECT * FROM billing.leases WHERE lease_id = :l"), {"l": lease_id})).one()
        return _lease_out(updated._asdict())

    async def bind_room_meter(
        self,
        room_id: str,
        meter_id: str,
        utility: Utility,
        effective_from: datetime | None,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Install a meter in a room from `effective_from` on (it moves from wherever it was)."""
        if conn is None:
            async with self._engine.begin() as own:
                await self.bind_room_meter(room_id, meter_id, utility, effective_from, own)
            self._outbox.notify()
            return
        await self._require(conn, "rooms", "room_id", room_id)
        previous = await self._room_of_meter(conn, meter_id)
        await self._accounts.rebind(conn, meter_id, utility, effective_from, room_id=room_id)
        await self._occupancy.queue(conn, {room_id, *previous})

    async def bind_common_meter(
        self, estate_id: str, meter_id: str, utility: Utility, effective_from: datetime | None
    ) -> None:
        """A common meter (stairwell lights, lifts, pumps): its cost is shared (公摊) by the estate's households."""
        async with self._engine.begin() as conn:
            await self._require(conn, "estates", "estate_id", estate_id)
            previous = await self._room_of_meter(conn, meter_id)
            await self._accounts.rebind(conn, meter_id, utility, effective_from, estate_id=estate_id)
            await self._occupancy.queue(conn, previous)
        self._outbox.notify()

    @staticmethod
    async def _room_of_meter(conn: AsyncConnection, meter_id: str) -> list[str]:
        """The room the meter's open binding puts it in (empty when none)."""
        rows = await conn.execute(
            text(
                "SELECT room_id FROM billing.meter_bindings WHERE meter_id = :m AND valid_to IS NULL AND room_id IS NOT NULL"
            ),
            {"m": meter_id},
        )
        return [row.room_id for row in rows]

    # --- scope ----------------------------------------------------------------------------------

    async def tenant_scope(self, tenant_id: str) -> dict[str, Any]:
        """The accounts, rooms and meters of a tenant's currently active leases."""
        async with self._engine.connect() as conn:
            await self._require(conn, "tenants", "tenant_id", tenant_id)
            leases = (
                await conn.execute(
                    text(
                        "SELECT lease_id, room_id, account_id FROM billing.leases WHERE tenant_id = :t "
                        "AND starts_at <= now() AND (ends_at IS NULL OR ends_at > now())"
                    ),
                    {"t": tenant_id},
                )
            ).all()
            rooms = sorted({lease.room_id for lease in leases})
            accounts = sorted({lease.account_id for lease in leases})
            meters = (
                await conn.execute(
                    text(
                        "SELECT DISTINCT meter_id FROM billing.meter_bindings WHERE "
                        "(room_id = ANY(:r) OR account_id = ANY(:a)) "
                        "AND (valid_from IS NULL OR valid_from <= now()) AND (valid_to IS NULL OR valid_to > now()) "
                        "ORDER BY meter_id"
                    ),
                    {"r": rooms, "a": accounts},
                )
            ).scalars()
            return {"tenant_id": tenant_id, "accounts": accounts, "rooms": rooms, "meters": list(meters)}

    # --- CSV import -----------------------------------------------------------------------------

    async def import_estate(self, estate_id: str, body: str) -> dict[str, int]:
        """Import a whole estate's rooms, meters and tenants: everything or nothing, every bad line reported."""
        rows, errors = parse_estate_csv(body)
        async with self._engine.begin() as conn:
            await self._require(conn, "estates", "estate_id", estate_id)
            errors += await self._conflicts(conn, rows)
            if errors:
                raise ImportRefused(sorted(errors, key=lambda e: e["line"]))
            counts = {"buildings": 0, "floors": 0, "rooms": 0, "meters": 0, "leases": 0}
            for building in sorted({r.building for r in rows}):
                counts["buildings"] += 1
                await conn.execute(
                    text(
                        "INSERT INTO billing.buildings (building_id, estate_id, name) VALUES (:b, :e, :n) "
                        "ON CONFLICT (building_id) DO NOTHING"
                    ),
                    {"b": f"{estate_id}.{building}", "e": estate_id, "n": building},
                )
            for building, floor in sorted({(r.building, r.floor) for r in rows}):
                counts["floors"] += 1
                await conn.execute(
                    text(
                        "INSERT INTO billing.floors (floor_id, building_id, level) VALUES (:f, :b, :l) "
                        "ON CONFLICT (floor_id) DO NOTHING"
                    ),
                    {"f": f"{estate_id}.{building}.{floor}", "b": f"{estate_id}.{building}", "l": floor},
                )
            for r in rows:
                room_id = f"{estate_id}.{r.building}.{r.room}"
                counts["rooms"] += 1
                await conn.execute(
                    text(
                        "INSERT INTO billing.rooms (room_id, floor_id, code, area_m2, household_size) "
                        "VALUES (:r, :f, :c, :a, :h) ON CONFLICT (room_id) DO UPDATE SET code = EXCLUDED.code, "
                        "area_m2 = EXCLUDED.area_m2, household_size = EXCLUDED.household_size"
                    ),
                    {
                        "r": room_id,
                        "f": f"{estate_id}.{r.building}.{r.floor}",
                        "c": r.code,
                        "a": r.area_m2,
                        "h": r.household_size,
                    },
                )
                for meter, utility in ((r.electricity_meter, Utility.ELECTRICITY), (r.water_meter, Utility.WATER)):
                    if meter:
                        counts["meters"] += 1
                        await self._accounts.rebind(conn, meter, utility, None, room_id=room_id)
                if r.tenant_id and r.move_in is not None:
                    counts["leases"] += 1
                    await self._write_tenant(conn, r.tenant_id, r.tenant_name, r.phone)
                    await self.start_lease(f"{room_id}.{r.move_in:%Y%m%d}", r.tenant_id, room_id, r.move_in, None, conn)
            # Leased rooms were queued by their move-in; the others are announced vacant here.
            vacant = [f"{estate_id}.{r.building}.{r.room}" for r in rows if not (r.tenant_id and r.move_in)]
            await self._occupancy.queue(conn, vacant)
        self._outbox.notify()
        return counts

    @staticmethod
    async def _conflicts(conn: AsyncConnection, rows: list[RoomRow]) -> list[dict[str, Any]]:
        """Lines that clash with what is already stored (a room code or meter used elsewhere)."""
        errors: list[dict[str, Any]] = []
        codes = {
            row.code: row.room_id
            for row in await conn.execute(
                text("SELECT code, room_id FROM billing.rooms WHERE code = ANY(:c)"), {"c": [r.code for r in rows]}
            )
        }
        for r in rows:
            owner = codes.get(r.code)
            if owner is not None and not owner.endswith(f".{r.building}.{r.room}"):
                errors.append(
                    {"line": r.line, "column": "code", "error": f"room code {r.code} belongs to room {owner}"}
                )
        return errors

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    async def _require(conn: AsyncConnection, table: str, column: str, value: str) -> None:
        found = await conn.execute(text(f"SELECT 1 FROM billing.{table} WHERE {column} = :v"), {"v": value})
        if found.first() is None:
            raise NotFound(f"no {table.removesuffix('s')} {value}")

    @staticmethod
    async def _unique(conn: AsyncConnection, sql: str, params: dict[str, Any], message: str) -> None:
        from sqlalchemy.exc import IntegrityError

        try:
            async with conn.begin_nested():
                await conn.execute(text(sql), params)
        except IntegrityError as err:
            raise Conflict(message, code="duplicate") from err


def _lease_out(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("lease_id", "tenant_id", "room_id", "account_id", "move_in", "move_out")
    return {k: row.get(k) for k in keys}
