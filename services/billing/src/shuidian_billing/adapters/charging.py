"""Pricing readings into charges: a register step becomes charge lines, hourly accruals and usage,
written with the watermarks and tier usage in one statement; a held reading is parked and announced."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shuidian_billing.adapters import store
from shuidian_billing.adapters.sql import OWNERS_SQL, Stamps, fetch, unnest
from shuidian_billing.adapters.tariffs import load_pricers
from shuidian_billing.adapters.usage import HOUR_SQL, USAGE_COLUMNS, spread_over_hours
from shuidian_billing.domain import consumption
from shuidian_billing.domain.meters import REGISTER, Owner, hour_start, open_hour, split_by_owner
from shuidian_billing.domain.periods import apportion
from shuidian_billing.domain.tariff_config import (
    CustomerClass,
    PlanContext,
    PlannedOwner,
    PlanPricer,
    Pricer,
    tier_key,
)
from shuidian_billing.settings import BillingSettings
from shuidian_kit.outbox import Outbox
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingHeld, Utility

log = logging.getLogger(__name__)

READINGS = Counter("billing_readings_total", "readings consumed", ["outcome"])
_ZERO = Decimal(0)
_UTILITIES = {u.value: u for u in Utility}
_CLASSES = {c.value: c for c in CustomerClass}


@dataclass
class Work:
    """What one billing transaction accumulates before writing it in one statement.

    `rows` holds one tuple per charge line (or per unpriced quantity), in the column order of
    `_ROWS`; PostgreSQL groups them into charge lines, hourly accruals and usage (see `_SAVE_SQL`).
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tiers: dict[tuple[str, str, str, datetime], Decimal] = field(default_factory=dict)
    tiers_changed: set[tuple[str, str, str, datetime]] = field(default_factory=set)
    held: list[tuple[Reading, str, Decimal, str, consumption.Watermark | None]] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)
    unbound: list[Reading] = field(default_factory=list)  # readings of meters nobody pays for, ever (not billed)


# The columns each part of `_SAVE_SQL` receives (parameter name and SQL type), in tuple order:
# watermarks, tier usage, and `Work.rows` (one per charge line or unpriced quantity).
_MARKS = (
    ("wm", "text"),
    ("wr", "text"),
    ("wv", "numeric"),
    ("wt", "timestamptz"),
    ("wx", "numeric"),
    ("wmx", "numeric"),
)
_TIERS = (("ta", "text"), ("tu", "text"), ("tp", "text"), ("ts", "timestamptz"), ("tq", "numeric"))
_ROWS = (
    ("meter_id", "text"),
    ("hour", "timestamptz"),
    ("account_id", "text"),
    ("utility", "text"),
    ("tariff_id", "bigint"),
    ("component", "text"),
    ("label", "text"),
    ("unit_price", "numeric"),
    ("line_quantity", "numeric"),
    ("amount", "numeric"),
    ("quantity", "numeric"),
    ("register_from", "numeric"),
    ("register_to", "numeric"),
    ("first_sample", "timestamptz"),
    ("last_sample", "timestamptz"),
)


# One statement writes everything a billing transaction accumulated. PostgreSQL groups the
# rows (one per charge line) into charge lines, hourly accruals and hourly usage, summing exact
# numerics, and each insert takes its row locks in key order so concurrent writers never deadlock.
# A piece's quantity is counted under one component only (`quantity`); a row without a
# component is quantity no tariff priced, and a row without an account is nobody's.
_SAVE_SQL = text(
    f"""
WITH marks AS (
    INSERT INTO billing.watermarks (meter_id, register, value, sampled_at, multiplier, register_max)
    SELECT * FROM unnest({unnest(_MARKS)}) AS w(m, r, v, t, x, mx)
    ORDER BY m, r
    ON CONFLICT (meter_id, register) DO UPDATE SET value = EXCLUDED.value, sampled_at = EXCLUDED.sampled_at,
        multiplier = EXCLUDED.multiplier, register_max = EXCLUDED.register_max
), tiers AS (
    INSERT INTO billing.tier_usage (account_id, utility, period, period_start, quantity)
    SELECT * FROM unnest({unnest(_TIERS)})
    ON CONFLICT (account_id, utility, period, period_start) DO UPDATE SET quantity = EXCLUDED.quantity
), rows AS (
    SELECT * FROM unnest({unnest(_ROWS)}) AS r({", ".join(name for name, _ in _ROWS)})
), lines AS (
    INSERT INTO billing.charge_lines (meter_id, hour, account_id, tariff_id, component, label, unit_price,
        quantity, amount, register_from, register_to, first_sample, last_sample)
    SELECT meter_id, hour, account_id, tariff_id, component, label, unit_price, sum(line_quantity), sum(amount),
        min(register_from), max(register_to), min(first_sample), max(last_sample)
    FROM rows WHERE component IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (meter_id, hour, account_id, tariff_id, component, label, unit_price) DO UPDATE SET
        quantity = billing.charge_lines.quantity + EXCLUDED.quantity,
        amount = billing.charge_lines.amount + EXCLUDED.amount,
        register_from = least(billing.charge_lines.register_from, EXCLUDED.register_from),
        register_to = greatest(billing.charge_lines.register_to, EXCLUDED.register_to),
        first_sample = least(billing.charge_lines.first_sample, EXCLUDED.first_sample),
        last_sample = greatest(billing.charge_lines.last_sample, EXCLUDED.last_sample)
), accrued AS (
    INSERT INTO billing.accruals (meter_id, hour, account_id, utility, quantity, amount)
    SELECT meter_id, hour, account_id, min(utility), sum(quantity), sum(amount)
    FROM rows WHERE account_id IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (meter_id, hour, account_id) DO UPDATE SET
        quantity = billing.accruals.quantity + EXCLUDED.quantity, amount = billing.accruals.amount + EXCLUDED.amount
)
INSERT INTO billing.usage_hourly (meter_id, hour, utility, quantity, cost)
SELECT m, h, min(ut), sum(q), sum(c) FROM (
    -- A piece inside one hour is booked in the hour it starts in; longer ones come spread (adapters/usage.py).
    SELECT meter_id, coalesce({HOUR_SQL.format("first_sample")}, hour), utility, quantity, amount FROM rows
    WHERE first_sample IS NULL OR last_sample <= {HOUR_SQL.format("first_sample")} + interval '1 hour'
    UNION ALL
    SELECT * FROM unnest({unnest(USAGE_COLUMNS)})
) AS u(m, h, ut, q, c)
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (meter_id, hour) DO UPDATE SET quantity = billing.usage_hourly.quantity + EXCLUDED.quantity,
    cost = billing.usage_hourly.cost + EXCLUDED.cost
"""
)


class Charger:
    """Prices register steps into charge rows and saves them (inside the caller's transaction)."""

    def __init__(self, outbox: Outbox, settings: BillingSettings, source: str) -> None:
        self._outbox = outbox
        self._source = source
        self._max_rate = {
            Utility.ELECTRICITY: settings.max_plausible_kwh_per_hour,
            Utility.WATER: settings.max_plausible_m3_per_hour,
        }
        # Parsed tariff plans and versions and the stamp of the tariff table they were built from; each
        # `PlanPricer` remembers the plan candidates per meter context, so resolution costs no query.
        self._pricers: tuple[str, dict[Utility, PlanPricer]] | None = None
        self._contexts: dict[tuple[str | None, str | None, str], PlanContext] = {}

    async def owners(self, conn: AsyncConnection, meter_ids: list[str]) -> dict[str, list[Owner]]:
        """Every owner period of each meter, in time order, with what picks its tariff plan."""
        result: dict[str, list[Owner]] = {}
        rows = await fetch(conn, OWNERS_SQL.format(where="b.meter_id = ANY($1::text[])"), meter_ids)
        contexts = self._contexts
        for row in rows:
            key = (row["estate_id"], row["building_id"], row["customer_class"])
            context = contexts.get(key)
            if context is None:
                context = contexts[key] = PlanContext(key[0], key[1], _CLASSES[key[2]].value)
            result.setdefault(row["meter_id"], []).append(
                PlannedOwner(
                    row["account_id"],
                    _UTILITIES[row["utility"]],
                    row["valid_from"],
                    row["valid_to"],
                    row["household_size"],
                    context,
                )
            )
        for periods in result.values():
            if len(periods) > 1:
                periods.sort(key=lambda o: o.valid_from or datetime.min.replace(tzinfo=UTC))
        return result

    async def pricers_at(self, conn: AsyncConnection, stamp: str) -> dict[Utility, PlanPricer]:
        """The plans' pricers, rebuilt only when the tariff table's stamp changed since they were built."""
        if self._pricers is None or self._pricers[0] != stamp:
            self._pricers = (stamp, await load_pricers(conn))
        return self._pricers[1]

    async def charge(
        self, conn: AsyncConnection, readings: Sequence[Reading], pricers: dict[Utility, PlanPricer]
    ) -> Work:
        """Price the readings against the meters' watermarks and save what they owe (the caller's transaction)."""
        work = Work()
        owners = await self.owners(conn, sorted({r.meter_id for r in readings}))
        meter_ids = sorted(owners)
        if not meter_ids:
            READINGS.labels("unbound").inc(len(readings))
            work.unbound.extend(readings)
            return work
        marks = await self.watermarks(conn, meter_ids, lock=True)
        posted: dict[tuple[str, str], datetime | None] = {
            (row[0], row[1]): row[2]
            for row in await fetch(
                conn,
                "SELECT meter_id, account_id, posted_through FROM billing.carries WHERE meter_id = ANY($1::text[])",
                meter_ids,
            )
        }
        households = sorted({o.account_id for periods in owners.values() for o in periods})
        work.tiers = await self.tier_usage(conn, households, min(r.sampled_at for r in readings))
        changed: dict[tuple[str, str], consumption.Watermark] = {}
        outcomes: collections.Counter[str] = collections.Counter()
        # Oldest first, so a batch that holds several samples of one meter bills each step.
        for reading in sorted(readings, key=lambda r: r.sampled_at):
            periods = owners.get(reading.meter_id)
            if periods is None:
                outcomes["unbound"] += 1
                work.unbound.append(reading)
                continue
            utility = periods[0].utility
            register = REGISTER[utility]
            value = reading.registers.get(register)
            if value is None:
                outcomes["no_register"] += 1
                continue
            key = (reading.meter_id, register)
            previous = marks.get(key)
            step = consumption.advance(
                previous,
                consumption.RegisterReading(reading.meter_id, register, value, reading.sampled_at),
                max_plausible_rate=self._max_rate[utility],
            )
            outcomes[step.outcome.value] += 1
            if step.outcome is consumption.Outcome.HELD:
                work.held.append((reading, register, value, str(step.hold_reason), previous))
                continue
            # `advance` hands back the watermark it was given when nothing moved.
            if step.watermark is not None and step.watermark is not previous:
                marks[key] = changed[key] = step.watermark
            pricer = pricers[utility]
            segments = (
                self._rate_deltas(reading, _plan_at(pricer, periods, reading.sampled_at), marks, changed, step)
                if pricer.rate_registers
                else None
            )
            if step.billed > 0:
                self.accrue(work, reading.meter_id, utility, periods, step, pricer, segments, posted, previous)
        await self.save(conn, work, list(changed.values()))
        for outcome, count in outcomes.items():
            READINGS.labels(outcome).inc(count)
        return work

    def _rate_deltas(
        self,
        reading: Reading,
        pricer: Pricer | None,
        marks: dict[tuple[str, str], consumption.Watermark],
        changed: dict[tuple[str, str], consumption.Watermark],
        step: consumption.Advance,
    ) -> dict[str, Decimal] | None:
        """Per-rate quantities from the meter's own tariff registers (尖峰平谷), when it reports them all."""
        if pricer is None:
            return None
        version = pricer.version_at(reading.sampled_at)
        if version is None:
            return None
        registers = version.rate_registers
        if not registers:
            return None
        deltas: dict[str, Decimal] = {}
        usable = True
        total_mark = marks.get((reading.meter_id, REGISTER[pricer.utility]))
        for register, label in registers.items():
            value = reading.registers.get(register)
            if value is None:
                usable = False
                continue
            key = (reading.meter_id, register)
            previous = marks.get(key)
            rate_step = consumption.advance(
                previous,
                consumption.RegisterReading(reading.meter_id, register, value, reading.sampled_at),
                max_plausible_rate=self._max_rate[pricer.utility],
                multiplier=total_mark.multiplier if total_mark else Decimal(1),
            )
            if rate_step.watermark is not None and rate_step.watermark != previous:
                marks[key] = changed[key] = rate_step.watermark
            if rate_step.outcome in (consumption.Outcome.BILLED, consumption.Outcome.UNCHANGED):
                deltas[label] = rate_step.billed
            else:
                usable = False
        if not usable or step.billed <= 0 or sum(deltas.values()) <= 0:
            return None
        # The total register is authoritative; the rate registers say how it splits between rates.
        labels = sorted(deltas)
        parts = apportion(step.billed, [deltas[label] for label in labels])
        return dict(zip(labels, parts, strict=True))

    def accrue(
        self,
        work: Work,
        meter_id: str,
        utility: Utility,
        periods: list[Owner],
        step: consumption.Advance,
        plans: PlanPricer,
        segments: dict[str, Decimal] | None,
        posted: dict[tuple[str, str], datetime | None],
        previous: consumption.Watermark | None,
    ) -> None:
        start, end = step.interval
        shares = split_by_owner(periods, start, end, step.billed)
        for owner, share_start, share_end, quantity in shares:
            if owner is None or quantity == 0:
                # Nobody leased the room then: the usage is recorded, nobody is charged.
                self._add_usage(work, meter_id, utility, share_start, share_end, quantity)
                continue
            # The owner period's plan: the most specific one covering its estate, building and class with a
            # version in force at the share's start (docs/tariffs.md); a meter outside every plan uses the default.
            choice = plans.choose(owner.context if isinstance(owner, PlannedOwner) else None, share_start)
            pricer = choice.pricer if choice is not None else plans.default
            version = pricer.version_at(share_start)
            if version is None:
                log.warning("no %s tariff in force at %s: %s consumed unpriced", utility, share_start, quantity)
                self._add_usage(work, meter_id, utility, share_start, share_end, quantity)
                continue
            account = owner.account_id
            period = version.tier_period
            before = Decimal(0)
            if period is not None:
                before = work.tiers.get((account, utility.value, *tier_key(period, share_start)), Decimal(0))
            priced = pricer.price(
                quantity, share_start, share_end, before, owner.household_size, segments if len(shares) == 1 else None
            )
            # Tier usage counts what tiered components priced, in the local period of each piece.
            for line in priced.lines:
                line_version = pricer.version_at(line.start)
                if line_version is not None and line.component == line_version.tier_name:
                    assert line_version.tier_period is not None
                    tkey = (account, utility.value, *tier_key(line_version.tier_period, line.start))
                    work.tiers[tkey] = work.tiers.get(tkey, Decimal(0)) + line.quantity
                    work.tiers_changed.add(tkey)
            work.accounts.add(account)
            self._add_lines(
                work, meter_id, utility, account, pricer, priced.lines, quantity, share_end, posted, previous, step
            )

    def _add_lines(
        self,
        work: Work,
        meter_id: str,
        utility: Utility,
        account: str,
        pricer: Pricer,
        lines: Sequence[Any],
        quantity: Decimal,
        share_end: datetime,
        posted: dict[tuple[str, str], datetime | None],
        previous: consumption.Watermark | None,
        step: consumption.Advance,
    ) -> None:
        through = posted.get((meter_id, account))
        register_from = previous.value if previous is not None else None
        register_to = step.watermark.value if step.watermark is not None else None
        if not lines:
            work.rows.append(
                (meter_id, open_hour(share_end, through), account, utility.value)
                + (None,) * 5
                + (_ZERO, quantity, None, None, None, None)
            )
            return
        # A piece's quantity counts once towards the accrual and usage: under its first component.
        first: dict[tuple[datetime, datetime], str] = {}
        for line in lines:
            counted = line.quantity
            if len(lines) > 1 and first.setdefault((line.start, line.end), line.component) != line.component:
                counted = _ZERO
            version = pricer.version_at(line.start)
            work.rows.append(
                (
                    meter_id,
                    open_hour(line.end, through),
                    account,
                    utility.value,
                    version.tariff_id if version is not None else 0,
                    line.component,
                    line.label,
                    line.unit_price,
                    line.quantity,
                    line.amount,
                    counted,
                    register_from,
                    register_to,
                    line.start,
                    line.end,
                )
            )

    @staticmethod
    def _add_usage(work: Work, meter_id: str, utility: Utility, start: datetime, end: datetime, qty: Decimal) -> None:
        """Usage nobody is charged for (no owner or no tariff then): recorded over its span, not accrued."""
        work.rows.append(
            (meter_id, hour_start(end), None, utility.value) + (None,) * 5 + (_ZERO, qty, None, None, start, end)
        )

    @staticmethod
    async def watermarks(
        conn: AsyncConnection, meter_ids: list[str], *, lock: bool
    ) -> dict[tuple[str, str], consumption.Watermark]:
        # Locked in a stable order: concurrent consumers of the same meters serialise, never deadlock.
        rows = await fetch(
            conn,
            "SELECT meter_id, register, value, sampled_at, multiplier, register_max FROM billing.watermarks "
            "WHERE meter_id = ANY($1::text[]) ORDER BY meter_id, register" + (" FOR UPDATE" if lock else ""),
            meter_ids,
        )
        return {(row[0], row[1]): consumption.Watermark(*row) for row in rows}

    @staticmethod
    async def tier_usage(
        conn: AsyncConnection, accounts: list[str], earliest: datetime
    ) -> dict[tuple[str, str, str, datetime], Decimal]:
        rows = await conn.execute(
            text(
                "SELECT account_id, utility, period, period_start, quantity FROM billing.tier_usage "
                "WHERE account_id = ANY(:a) AND period_start >= :since ORDER BY 1, 2, 3, 4 FOR UPDATE"
            ),
            {"a": accounts, "since": earliest - timedelta(days=400)},
        )
        return {(r.account_id, r.utility, r.period, r.period_start): r.quantity for r in rows}

    async def save(self, conn: AsyncConnection, work: Work, marks: list[consumption.Watermark]) -> None:
        """Watermarks, tier usage, charge lines, accruals and usage in one statement (one round trip).

        Each column travels as one array literal (see `store.array`): the driver then encodes one
        string per column instead of every element, which was most of the writes' CPU.
        """
        tiers = sorted(work.tiers_changed)
        if not (marks or tiers or work.rows):
            await self._hold(conn, work.held)
            return
        stamps = Stamps()
        encode: dict[str, Callable[[Sequence[Any]], str]] = {"text": store.text_array, "timestamptz": stamps.array}
        params: dict[str, str] = {}
        for spec, rows in (
            (_MARKS, [(w.meter_id, w.register, w.value, w.sampled_at, w.multiplier, w.register_max) for w in marks]),
            (_TIERS, [(*k, work.tiers[k]) for k in tiers]),
            (_ROWS, work.rows),
            # Usage history: the rows whose span runs past an hour, spread over its hours (adapters/usage.py).
            (USAGE_COLUMNS, spread_over_hours((r[0], r[3], r[13], r[14], r[10], r[9]) for r in work.rows)),
        ):
            columns = list(zip(*rows, strict=True)) if rows else [()] * len(spec)
            for (name, kind), column in zip(spec, columns, strict=True):
                params[name] = encode.get(kind, store.array)(column)
        await conn.execute(_SAVE_SQL, params)
        await self._hold(conn, work.held)

    async def _hold(
        self, conn: AsyncConnection, held: list[tuple[Reading, str, Decimal, str, consumption.Watermark | None]]
    ) -> None:
        if not held:
            return
        inserted = {
            row.reading_id
            for row in await conn.execute(
                text(
                    "INSERT INTO billing.held_readings (reading_id, meter_id, register, value, sampled_at, reason) "
                    "SELECT * FROM unnest(CAST(:i AS uuid[]), CAST(:m AS text[]), CAST(:r AS text[]), "
                    "CAST(:v AS numeric[]), CAST(:t AS timestamptz[]), CAST(:why AS text[])) "
                    "ON CONFLICT DO NOTHING RETURNING reading_id"
                ),
                {
                    "i": [h[0].reading_id for h in held],
                    "m": [h[0].meter_id for h in held],
                    "r": [h[1] for h in held],
                    "v": [h[2] for h in held],
                    "t": [h[0].sampled_at for h in held],
                    "why": [h[3] for h in held],
                },
            )
        }
        events: list[tuple[str, Any, bool]] = []
        for reading, register, value, reason, mark in held:
            if reading.reading_id not in inserted:
                continue  # a duplicate of a reading already held (and announced)
            log.warning("held reading of %s for review: %s", reading.meter_id, reason)
            event = ReadingHeld(
                source=self._source,
                meter_id=reading.meter_id,
                reading_id=reading.reading_id,
                register_name=register,
                value=value,
                sampled_at=reading.sampled_at,
                reason=reason,
                watermark_value=mark.value if mark else None,
                watermark_sampled_at=mark.sampled_at if mark else None,
            )
            events.append((topics.reading_held(reading.meter_id), event, False))
        await self._outbox.add_many(conn, events)


def _plan_at(plans: PlanPricer, periods: list[Owner], at: datetime) -> Pricer | None:
    """The pricer of the plan of the owner period covering `at` (for the meter's own rate registers)."""
    owner = next((o for o in periods if o.covers(at)), None)
    if owner is None:
        return None
    choice = plans.choose(owner.context if isinstance(owner, PlannedOwner) else None, at)
    return choice.pricer if choice is not None else None
