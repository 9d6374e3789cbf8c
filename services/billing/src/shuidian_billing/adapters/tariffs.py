"""Tariff plans and their versions: load them into pricers, add a version (a new price never re-prices the
past), list them, name the customer class of rooms, leases and meter bindings, and say which plan priced a line.

A plan applies to an estate (optionally one building of it) and/or a customer class; the default plan
(`default`, no scope) holds what `/v1/tariffs/{utility}` has always held. A plan's scope never changes once
it has a version, so a charge line's tariff version says for ever which plan priced it and why."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.domain import BillingDomainError
from shuidian_billing.domain.tariff_config import (
    COMPONENTS,
    DEFAULT_PLAN,
    CustomerClass,
    FlatIn,
    PlanContext,
    PlanPricer,
    PlanScope,
    Pricer,
    StoredVersion,
    check_plan_components,
    to_domain,
)
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_shared.messages import Utility

ClassTarget = Literal["room", "lease", "meter"]


def _scope(row: Any) -> PlanScope:
    cls = CustomerClass(row.customer_class) if row.customer_class is not None else None
    return PlanScope(row.plan_id, row.estate_id, row.building_id, cls)


async def load_pricers(conn: AsyncConnection) -> dict[Utility, PlanPricer]:
    """Per utility, every plan's pricer over its stored versions (and the default plan's as `.default`)."""
    plans = [
        _scope(row)
        for row in await conn.execute(
            text("SELECT plan_id, estate_id, building_id, customer_class FROM billing.tariff_plans")
        )
    ]
    versions: dict[tuple[Utility, str], list[StoredVersion]] = {}
    rows = await conn.execute(
        text("SELECT tariff_id, plan_id, utility, unit_price, components, effective_from FROM billing.tariffs")
    )
    for row in rows:
        utility = Utility(row.utility)
        components = (
            COMPONENTS.validate_python(row.components)
            if row.components is not None
            else (FlatIn(unit_price=row.unit_price),)
        )
        domain = to_domain(row.tariff_id, utility, row.effective_from, components)
        versions.setdefault((utility, row.plan_id), []).append(StoredVersion(row.tariff_id, components, domain))
    return {
        u: PlanPricer(u, plans, {plan: Pricer(u, v) for (vu, plan), v in versions.items() if vu is u}) for u in Utility
    }


async def lease_contexts(conn: AsyncConnection, lease_ids: Sequence[str]) -> dict[str, PlanContext]:
    """What picks each lease's plan for its fixed fees: its room's estate and building, and its class
    (the lease's, else the room's)."""
    rows = await conn.execute(
        text(
            "SELECT l.lease_id, b.estate_id, b.building_id, coalesce(l.customer_class, r.customer_class) AS cls "
            "FROM billing.leases l JOIN billing.rooms r USING (room_id) JOIN billing.floors f USING (floor_id) "
            "JOIN billing.buildings b USING (building_id) WHERE l.lease_id = ANY(:l)"
        ),
        {"l": list(lease_ids)},
    )
    return {row.lease_id: PlanContext(row.estate_id, row.building_id, CustomerClass(row.cls).value) for row in rows}


class TariffAdmin:
    """Plans, their versions and the customer classes that pick them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def set_tariff(self, utility: Utility, unit_price: Decimal, effective_from: datetime) -> None:
        """A flat price of the default plan from `effective_from` on (kept for the original endpoint)."""
        if unit_price < 0:
            raise BillingError("price must not be negative", code="invalid_price", status_code=422)
        await self.put_tariff_version(utility, effective_from, (FlatIn(unit_price=unit_price),))

    async def put_tariff_version(
        self, utility: Utility, effective_from: datetime, components: Sequence[Any], *, plan_id: str = DEFAULT_PLAN
    ) -> dict[str, Any]:
        """Add a version to a plan; a new price never re-prices the past.

        The first version of a plan's utility may start in the past (commissioning). After that, a version
        asked to start in the past takes effect now; a version already in force cannot change (an identical
        replay is a no-op, 409 otherwise). Returns the id, the effective instant and the version's number.
        """
        try:
            to_domain(0, utility, effective_from, components)
        except BillingDomainError as err:
            raise BillingError(str(err), code="invalid_tariff", status_code=422) from err
        flat = [c for c in components if isinstance(c, FlatIn)]
        unit_price = flat[0].unit_price if len(components) == 1 and len(flat) == 1 and flat[0].name == "flat" else None
        stored = None if unit_price is not None else json.dumps(COMPONENTS.dump_python(tuple(components), mode="json"))
        async with self._engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"tariff:{plan_id}:{utility.value}"}
            )
            plan = (
                await conn.execute(
                    text(
                        "SELECT plan_id, estate_id, building_id, customer_class FROM billing.tariff_plans "
                        "WHERE plan_id = :p FOR SHARE"
                    ),
                    {"p": plan_id},
                )
            ).first()
            if plan is None:
                raise NotFound(f"no tariff plan {plan_id}")
            try:
                check_plan_components(_scope(plan), components)
            except BillingDomainError as err:
                raise BillingError(str(err), code="invalid_tariff", status_code=422) from err
            existing = (
                await conn.execute(
                    text(
                        "SELECT tariff_id, unit_price, components, effective_from FROM billing.tariffs "
                        "WHERE plan_id = :p AND utility = :u AND effective_from = :e"
                    ),
                    {"p": plan_id, "u": utility.value, "e": effective_from},
                )
            ).first()
            now = datetime.now(UTC)
            if existing is not None:
                same = (existing.unit_price, existing.components) == (
                    unit_price,
                    None if stored is None else json.loads(stored),
                )
                if same:
                    return await _added(conn, int(existing.tariff_id), existing.effective_from, plan_id, utility)
                if effective_from <= now:
                    raise Conflict(
                        "a tariff version already in force cannot change (a new price never re-prices the past); "
                        "add a new version instead, or correct a closed period with a correction run",
                        code="tariff_in_force",
                    )
                await conn.execute(text("DELETE FROM billing.tariffs WHERE tariff_id = :t"), {"t": existing.tariff_id})
            elif effective_from < now:
                commissioned = (
                    await conn.execute(
                        text("SELECT 1 FROM billing.tariffs WHERE plan_id = :p AND utility = :u LIMIT 1"),
                        {"p": plan_id, "u": utility.value},
                    )
                ).first()
                if commissioned is not None:
                    effective_from = now
            tariff_id = (
                await conn.execute(
                    text(
                        "INSERT INTO billing.tariffs (plan_id, utility, unit_price, components, effective_from) "
                        "VALUES (:pl, :u, :p, CAST(:c AS jsonb), :e) RETURNING tariff_id"
                    ),
                    {"pl": plan_id, "u": utility.value, "p": unit_price, "c": stored, "e": effective_from},
                )
            ).scalar_one()
            return await _added(conn, int(tariff_id), effective_from, plan_id, utility)

    async def tariff_versions(self, utility: Utility, plan_id: str = DEFAULT_PLAN) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            await self._plan_row(conn, plan_id)
            pricer = (await load_pricers(conn))[utility].pricers.get(plan_id)
        return [
            {
                "tariff_id": v.tariff_id,
                "plan_id": plan_id,
                "version": number,
                "utility": utility,
                "effective_from": v.domain.effective_from,
                "components": COMPONENTS.dump_python(v.components, mode="json"),
            }
            for number, v in enumerate(pricer.versions if pricer else [], start=1)
        ]

    # --- plans -----------------------------------------------------------------------------------------

    async def plans(self, estate_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every plan (or those of the estates named, with the plans that span every estate), by plan id."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"{_PLANS_SQL} WHERE CAST(:e AS text[]) IS NULL OR p.estate_id IS NULL OR p.estate_id = ANY(:e) "
                    "ORDER BY p.plan_id"
                ),
                {"e": None if estate_ids is None else list(estate_ids)},
            )
            return [_plan_out(r) for r in rows]

    async def plan(self, plan_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            return _plan_out(await self._plan_row(conn, plan_id))

    @staticmethod
    async def _plan_row(conn: AsyncConnection, plan_id: str) -> Any:
        row = (await conn.execute(text(f"{_PLANS_SQL} WHERE p.plan_id = :p"), {"p": plan_id})).first()
        if row is None:
            raise NotFound(f"no tariff plan {plan_id}")
        return row

    async def put_plan(
        self,
        plan_id: str,
        name: str,
        estate_id: str | None,
        building_id: str | None,
        customer_class: CustomerClass | None,
    ) -> dict[str, Any]:
        """Create a plan or rename it; its scope is fixed once it has a version (409 `plan_scope_fixed`)."""
        try:
            scope = PlanScope(plan_id, estate_id, building_id, customer_class)
        except BillingDomainError as err:
            raise BillingError(str(err), code="invalid_plan", status_code=422) from err
        if plan_id == DEFAULT_PLAN and scope.rank != (False, False, False):
            raise BillingError(
                "the default plan covers everything: it has no scope", code="invalid_plan", status_code=422
            )
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tariff-plans'))"))
            if building_id is not None:
                found = (
                    await conn.execute(
                        text("SELECT estate_id FROM billing.buildings WHERE building_id = :b"), {"b": building_id}
                    )
                ).first()
                if found is None or found.estate_id != estate_id:
                    raise BillingError(
                        f"building {building_id} is not in estate {estate_id}", code="invalid_plan", status_code=422
                    )
            elif estate_id is not None:
                found = (
                    await conn.execute(text("SELECT 1 FROM billing.estates WHERE estate_id = :e"), {"e": estate_id})
                ).first()
                if found is None:
                    raise NotFound(f"no estate {estate_id}")
            current = (
                await conn.execute(
                    text(
                        "SELECT plan_id, estate_id, building_id, customer_class, "
                        "EXISTS (SELECT 1 FROM billing.tariffs t WHERE t.plan_id = p.plan_id) AS used "
                        "FROM billing.tariff_plans p WHERE plan_id = :p"
                    ),
                    {"p": plan_id},
                )
            ).first()
            if current is not None and current.used and _scope(current) != scope:
                raise Conflict(
                    "a plan's scope cannot change once it has versions (its charges name it); create another plan",
                    code="plan_scope_fixed",
                )
            params = {
                "p": plan_id,
                "n": name,
                "e": estate_id,
                "b": building_id,
                "c": customer_class.value if customer_class is not None else None,
            }
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        text(
                            "INSERT INTO billing.tariff_plans (plan_id, name, estate_id, building_id, customer_class) "
                            "VALUES (:p, :n, :e, :b, :c) ON CONFLICT (plan_id) DO UPDATE SET name = EXCLUDED.name, "
                            "estate_id = EXCLUDED.estate_id, building_id = EXCLUDED.building_id, "
                            "customer_class = EXCLUDED.customer_class"
                        ),
                        params,
                    )
            except IntegrityError as err:
                raise Conflict(
                    "another plan already has this scope (one plan per estate, building and class)",
                    code="plan_scope_taken",
                ) from err
            return _plan_out(await self._plan_row(conn, plan_id))

    # --- customer classes --------------------------------------------------------------------------------

    async def set_customer_class(
        self, target: ClassTarget, object_id: str, customer_class: CustomerClass | None
    ) -> dict[str, Any]:
        """Name the class of a room, a lease (overrides its room's) or a meter's open binding (overrides both).

        A room always has a class (None is refused); None on a lease or binding falls back to the room's.
        The class picks the plan of readings billed from now on: charges already made stay as they were.
        """
        value = customer_class.value if customer_class is not None else None
        table, key = {
            "room": ("rooms", "room_id"),
            "lease": ("leases", "lease_id"),
            "meter": ("meter_bindings", "meter_id"),
        }[target]
        if target == "room" and value is None:
            raise BillingError("a room always has a customer class", code="invalid_class", status_code=422)
        open_only = " AND valid_to IS NULL" if target == "meter" else ""
        async with self._engine.begin() as conn:
            updated = await conn.execute(
                text(f"UPDATE billing.{table} SET customer_class = :c WHERE {key} = :i{open_only}"),
                {"c": value, "i": object_id},
            )
            if updated.rowcount == 0:
                raise NotFound(f"no {target} {object_id}" + (" with an open binding" if target == "meter" else ""))
        return {"target": target, "id": object_id, "customer_class": value}


_PLANS_SQL = (
    "SELECT p.plan_id, p.name, p.estate_id, p.building_id, p.customer_class, p.created_at, "
    "(SELECT coalesce(jsonb_object_agg(v.utility, v.n), '{}'::jsonb) FROM (SELECT utility, count(*) AS n "
    "FROM billing.tariffs t WHERE t.plan_id = p.plan_id GROUP BY utility) v) AS versions "
    "FROM billing.tariff_plans p"
)


def _plan_out(row: Any) -> dict[str, Any]:
    scope = _scope(row)
    reason_zh, reason = scope.reason()
    return {
        "plan_id": row.plan_id,
        "name": row.name,
        "estate_id": row.estate_id,
        "building_id": row.building_id,
        "customer_class": row.customer_class,
        "versions": {k: int(v) for k, v in dict(row.versions).items()},
        "applies_zh": reason_zh,
        "applies": reason,
        "created_at": row.created_at,
    }


async def _added(
    conn: AsyncConnection, tariff_id: int, effective_from: datetime, plan_id: str, utility: Utility
) -> dict[str, Any]:
    number = (
        await conn.execute(
            text("SELECT count(*) FROM billing.tariffs WHERE plan_id = :p AND utility = :u AND effective_from <= :e"),
            {"p": plan_id, "u": utility.value, "e": effective_from},
        )
    ).scalar_one()
    return {"tariff_id": tariff_id, "effective_from": effective_from, "plan_id": plan_id, "version": int(number)}


async def priced_under(conn: AsyncConnection, tariff_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per tariff version: its plan, its number within the plan and utility, and why such a line was priced
    under that plan ("priced under plan X version 3 because …"), in zh-CN and English."""
    rows = await conn.execute(
        text(
            "SELECT t.tariff_id, t.utility, p.plan_id, p.name, p.estate_id, p.building_id, p.customer_class, "
            "(SELECT count(*) FROM billing.tariffs o WHERE o.plan_id = t.plan_id AND o.utility = t.utility "
            " AND o.effective_from <= t.effective_from) AS version "
            "FROM billing.tariffs t JOIN billing.tariff_plans p USING (plan_id) WHERE t.tariff_id = ANY(:t)"
        ),
        {"t": sorted(set(tariff_ids))},
    )
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        reason_zh, reason = _scope(row).reason()
        out[int(row.tariff_id)] = {
            "plan_id": row.plan_id,
            "plan_name": row.name,
            "version": int(row.version),
            "explanation_zh": f"按价格方案「{row.name}」（{row.plan_id}）第 {int(row.version)} 版计价：{reason_zh}",
            "explanation": f"priced under plan {row.plan_id} version {int(row.version)} because {reason}",
        }
    return out
