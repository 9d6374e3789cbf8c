"""Explicit meter events (replacement, CT-ratio change, rollover) and the readings held for review."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.adapters.charging import Charger, Work
from shuidian_billing.adapters.levels import BalanceLevels
from shuidian_billing.adapters.sql import FLUSH_LOCK
from shuidian_billing.adapters.tariffs import load_pricers
from shuidian_billing.domain import BillingDomainError, consumption
from shuidian_billing.domain.meters import REGISTER
from shuidian_billing.errors import BillingError, Conflict, NotFound
from shuidian_kit.outbox import Outbox


class MeterEvents:
    """Applies a meter event and bills its tail; lists held readings."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, charger: Charger, levels: BalanceLevels) -> None:
        self._engine = engine
        self._outbox = outbox
        self._charger = charger
        self._levels = levels

    async def meter_event(
        self, meter_id: str, event: consumption.MeterEvent, operator: str, reason: str
    ) -> dict[str, Any]:
        """Apply an explicit meter event (replacement, CT-ratio change, rollover) and bill its tail."""
        if not operator.strip() or not reason.strip():
            raise BillingError("an operator and a reason are required", code="invalid_event", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": FLUSH_LOCK})
            owners = await self._charger.owners(conn, [meter_id])
            if meter_id not in owners:
                raise NotFound(f"meter {meter_id} is not bound")
            utility = owners[meter_id][0].utility
            register = REGISTER[utility]
            marks = await self._charger.watermarks(conn, [meter_id], lock=True)
            mark = marks.get((meter_id, register))
            if mark is None:
                raise Conflict(f"meter {meter_id} has no accepted reading yet", code="no_watermark")
            try:
                step = consumption.apply_event(mark, event)
            except BillingDomainError as err:
                raise BillingError(str(err), code="invalid_event", status_code=422) from err
            assert step.watermark is not None
            changed = [step.watermark]
            if isinstance(event, consumption.MeterReplaced | consumption.MultiplierChanged):
                # Tariff registers of the meter restart with the new regime: they reopen on the next reading.
                await conn.execute(
                    text("DELETE FROM billing.watermarks WHERE meter_id = :m AND register <> :r"),
                    {"m": meter_id, "r": register},
                )
            work = Work()
            pricers = await load_pricers(conn)
            posted = {
                (row.meter_id, row.account_id): row.posted_through
                for row in await conn.execute(
                    text("SELECT meter_id, account_id, posted_through FROM billing.carries WHERE meter_id = :m"),
                    {"m": meter_id},
                )
            }
            work.tiers = await self._charger.tier_usage(
                conn, sorted({o.account_id for o in owners[meter_id]}), step.interval[0]
            )
            if step.billed > 0:
                self._charger.accrue(
                    work, meter_id, utility, owners[meter_id], step, pricers[utility], None, posted, mark
                )
            await self._charger.save(conn, work, changed)
            kind = {
                consumption.MeterReplaced: "replaced",
                consumption.MultiplierChanged: "multiplier_changed",
                consumption.RolloverDeclared: "rollover",
            }[type(event)]
            detail = {k: str(v) for k, v in dataclasses.asdict(event).items() if v is not None}
            await conn.execute(
                text(
                    "INSERT INTO billing.meter_events (meter_id, kind, at, detail, billed, operator, reason) "
                    "VALUES (:m, :k, :at, CAST(:d AS jsonb), :b, :o, :why)"
                ),
                {
                    "m": meter_id,
                    "k": kind,
                    "at": event.at,
                    "d": json.dumps(detail),
                    "b": step.billed,
                    "o": operator,
                    "why": reason,
                },
            )
            await conn.execute(
                text(
                    "UPDATE billing.held_readings SET status = 'resolved' WHERE meter_id = :m AND status = 'open' "
                    "AND sampled_at <= :at"
                ),
                {"m": meter_id, "at": event.at},
            )
            await self._levels.evaluate_levels(conn, work.accounts)
        self._outbox.notify()
        return {"meter_id": meter_id, "kind": kind, "billed": step.billed, "register_value": step.watermark.value}

    async def held_readings(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT reading_id, meter_id, register AS register_name, value, sampled_at, reason, status, held_at "
                    "FROM billing.held_readings WHERE CAST(:s AS text) IS NULL OR status = :s ORDER BY held_at DESC LIMIT :n"
                ),
                {"s": status, "n": limit},
            )
            return [r._asdict() for r in rows]
