"""The billing application service: prices reading batches into hourly accruals, posts them to the
ledger, takes top-ups and subsidies, applies meter events and corrections (冲正), and emits balance
events — each unit of work in one database transaction, events through the outbox after commit.

Stable entry points for other billing modules that move money:
  * `Billing.top_up(account_id, amount, channel, reference, idempotency_key, *, utility=None)` —
    an idempotent credit from a payment channel (returns the payment; a replay returns it again).
  * `store.post(conn, kind, entries, memo=…, reverses=…)` inside a transaction, followed by
    `Billing.evaluate_levels(conn, {account_id})` — any other balanced posting (refunds …).
  * `Billing.purse_of(conn, account_id, utility)` — the ledger account a household's money sits in.

Readings arrive through `enqueue` (the MQTT handler) into one of `BILLING_LANES` queues chosen by
gateway; each lane's worker takes every batch queued so far, up to
`BILLING_MAX_BATCHES_PER_TRANSACTION`, and bills them in one transaction. `subscribe` wires the
MQTT side: with `BILLING_SHARD_COUNT` > 1 a replica takes only its shard of the gateways, chosen
on the topic before the payload is decoded (`shard_of`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing import store
from shuidian_billing.domain import BillingDomainError, consumption, ledger
from shuidian_billing.domain.periods import apportion, microseconds
from shuidian_billing.settings import BillingSettings
from shuidian_billing.streams import Item, Sequencer, StreamKey
from shuidian_billing.tariff_config import COMPONENTS, FlatIn, Pricer, StoredVersion, tier_key, to_domain
from shuidian_kit.errors import Conflict, NotFound, ServiceError
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_kit.retry import backoff, is_transient
from shuidian_shared import topics
from shuidian_shared.messages import (
    BalanceEvent,
    BalanceEventKind,
    BalanceLevel,
    MeterRef,
    Reading,
    ReadingBatch,
    ReadingHeld,
    ReplayRequest,
    Utility,
)
from shuidian_shared.money import split_cents

log = logging.getLogger(__name__)

READINGS = Counter("billing_readings_total", "readings consumed", ["outcome"])
COMMITTED = Counter("billing_readings_committed_total", "readings whose billing transaction committed")
BATCH_SECONDS = Histogram("billing_batch_seconds", "time to bill one transaction of reading batches")
OTHER_SHARD = Counter("billing_reading_batches_other_shard_total", "reading batches left to another billing shard")
REANNOUNCED = Counter("billing_balance_events_reannounced_total", "balance events published again (anti-entropy)")
RETRIED = Counter("billing_transactions_retried_total", "billing transactions retried after a transient failure")

REGISTER = {Utility.ELECTRICITY: "energy_active_import_total", Utility.WATER: "water_volume_total"}
REVENUE = {Utility.ELECTRICITY: "revenue:electricity", Utility.WATER: "revenue:water"}
CHANNEL_ACCOUNTS = {
    "cash": "cash:counter",
    "bank": "clearing:bank",
    "wechat": "clearing:wechat",
    "alipay": "clearing:alipay",
    "sandbox": "clearing:sandbox",
}
COMMON = "common:"  # owner id prefix of an estate's common meter (公摊); its pool is 'shared:<estate>'
_SEVERITY = {BalanceLevel.OK: 0, BalanceLevel.LOW_1: 1, BalanceLevel.LOW_2: 2, BalanceLevel.EXHAUSTED: 3}
_FLUSH_LOCK = 7_234_001  # advisory lock: billing transactions share it, the flush takes it alone
_HOUR = timedelta(hours=1)
_ZERO = Decimal(0)
_UTILITIES = {u.value: u for u in Utility}
# Changes whenever a tariff version is added or a future one replaced (ids are never reused).
TARIFF_STAMP = "count(*)::text || ':' || max(tariff_id)::text"
# An account in one round trip: the account, its balance mode, the cached balances of every purse it
# may have and its unposted charges (accruals and carried remainders) per utility.
ACCOUNT_SQL = """
SELECT a.name, a.estate_id, a.level, a.sequence, a.grace_credit, coalesce(e.shared_balance, true) AS shared,
       (SELECT coalesce(json_object_agg(ledger_account, balance::text), '{}') FROM billing.balances
        WHERE ledger_account = ANY(:names)) AS balances,
       (SELECT coalesce(json_object_agg(utility, owed::text), '{}') FROM (
            SELECT utility, sum(amount) AS owed FROM (
                SELECT utility, amount FROM billing.accruals WHERE account_id = :a
                UNION ALL SELECT utility, remainder FROM billing.carries WHERE account_id = :a) o
            GROUP BY utility) x) AS owed
FROM billing.accounts a LEFT JOIN billing.estates e USING (estate_id) WHERE a.account_id = :a
"""


SUBSCRIPTION_GROUP = "billing"


def shard_of(gateway_id: str, shard_count: int) -> int:
    """The billing shard of a gateway: a stable hash, the same in every process, host and release."""
    return int.from_bytes(hashlib.blake2b(gateway_id.encode(), digest_size=8).digest(), "big") % shard_count


class BillingError(ServiceError):
    """Root of billing's domain errors."""


@dataclass(frozen=True)
class Owner:
    """Who pays for a meter over [valid_from, valid_to) (None = unbounded)."""

    account_id: str
    utility: Utility
    valid_from: datetime | None
    valid_to: datetime | None
    household_size: int

    def covers(self, at: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (self.valid_to is None or at < self.valid_to)


# One query answers "who pays for this meter when": direct account bindings, room bindings
# intersected with the room's leases, and estate common meters. NULL bounds are open.
OWNERS_SQL = """
SELECT b.meter_id, b.utility,
       greatest(b.valid_from, l.starts_at) AS valid_from,
       least(b.valid_to, l.ends_at) AS valid_to,
       coalesce(b.account_id, l.account_id, 'common:' || b.estate_id) AS account_id,
       coalesce(r.household_size, 1) AS household_size
FROM billing.meter_bindings b
LEFT JOIN billing.leases l ON l.room_id = b.room_id
     AND (b.valid_to IS NULL OR l.starts_at < b.valid_to)
     AND (l.ends_at IS NULL OR b.valid_from IS NULL OR l.ends_at > b.valid_from)
LEFT JOIN billing.rooms r ON r.room_id = b.room_id
WHERE (b.room_id IS NULL OR l.lease_id IS NOT NULL) AND {where}
"""


def _hour(at: datetime) -> datetime:
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def _open_hour(at: datetime, posted_through: datetime | None) -> datetime:
    """The hour an amount at `at` accrues to: its own, or the first after the last posted one (a posted hour is closed)."""
    hour = _hour(at)
    return hour if posted_through is None or hour > posted_through else posted_through + _HOUR


@dataclass
class _Work:
    """What one billing transaction accumulates before writing it in one statement.

    `rows` holds one tuple per charge line (or per unpriced quantity), in the column order of
    `_ROWS`; PostgreSQL groups them into charge lines, hourly accruals and usage (see `_SAVE_SQL`).
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tiers: dict[tuple[str, str, str, datetime], Decimal] = field(default_factory=dict)
    tiers_changed: set[tuple[str, str, str, datetime]] = field(default_factory=set)
    held: list[tuple[Reading, str, Decimal, str, consumption.Watermark | None]] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)


# The columns each part of `_SAVE_SQL` receives (parameter name and SQL type), in tuple order:
# watermarks, tier usage, and `_Work.rows` (one per charge line or unpriced quantity).
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


def _unnest(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"CAST(CAST(:{name} AS text) AS {kind}[])" for name, kind in columns)


# One statement writes everything a billing transaction accumulated. PostgreSQL groups the
# rows (one per charge line) into charge lines, hourly accruals and hourly usage, summing exact
# numerics, and each insert takes its row locks in key order so concurrent writers never deadlock.
# A piece's quantity is counted under one component only (`quantity`); a row without a
# component is quantity no tariff priced, and a row without an account is nobody's.
_SAVE_SQL = text(
    f"""
WITH marks AS (
    INSERT INTO billing.watermarks (meter_id, register, value, sampled_at, multiplier, register_max)
    SELECT * FROM unnest({_unnest(_MARKS)}) AS w(m, r, v, t, x, mx)
    ORDER BY m, r
    ON CONFLICT (meter_id, register) DO UPDATE SET value = EXCLUDED.value, sampled_at = EXCLUDED.sampled_at,
        multiplier = EXCLUDED.multiplier, register_max = EXCLUDED.register_max
), tiers AS (
    INSERT INTO billing.tier_usage (account_id, utility, period, period_start, quantity)
    SELECT * FROM unnest({_unnest(_TIERS)})
    ON CONFLICT (account_id, utility, period, period_start) DO UPDATE SET quantity = EXCLUDED.quantity
), rows AS (
    SELECT * FROM unnest({_unnest(_ROWS)}) AS r({", ".join(name for name, _ in _ROWS)})
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
SELECT meter_id, hour, min(utility), sum(quantity), sum(amount) FROM rows
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (meter_id, hour) DO UPDATE SET quantity = billing.usage_hourly.quantity + EXCLUDED.quantity,
    cost = billing.usage_hourly.cost + EXCLUDED.cost
"""
)


class Billing:
    def __init__(self, engine: AsyncEngine, outbox: Outbox, settings: BillingSettings, source: str) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source
        self._max_rate = {
            Utility.ELECTRICITY: settings.max_plausible_kwh_per_hour,
            Utility.WATER: settings.max_plausible_m3_per_hour,
        }
        # One queue and worker per lane; a gateway always lands in the same lane, so lanes bill
        # disjoint meters and one lane's pricing overlaps the other's database round trips.
        self._lanes: list[asyncio.Queue[Item]] = [
            asyncio.Queue(maxsize=settings.queue_batches) for _ in range(settings.lanes)
        ]
        self._sequencers = [
            Sequencer(
                wait_seconds=settings.gap_wait_seconds,
                load=self._stream_position,
                gap=self._gap_seen,
                resolved=self._gap_resolved,
            )
            for _ in self._lanes
        ]
        self.on_commit: Callable[[Sequence[ReadingBatch]], None] | None = None
        # Parsed tariff versions and the stamp of the tariff table they were built from.
        self._pricers: tuple[str, dict[Utility, Pricer]] | None = None

    def notify(self) -> None:
        """Wake the outbox relay after a commit that queued events."""
        self._outbox.notify()

    # --- readings -------------------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def subscribe(self, mqtt: MqttLink) -> None:
        """Subscribe to reading batches: every gateway's, or this replica's shard of them (BILLING_SHARD_*)."""
        count, index = self._settings.shard_count, self._settings.shard_index
        if count == 1:
            mqtt.subscribe(topics.shared(SUBSCRIPTION_GROUP, topics.ALL_READINGS), ReadingBatch, self.enqueue)
            return
        group = f"{SUBSCRIPTION_GROUP}-shard-{index}-of-{count}"
        mqtt.subscribe(topics.shared(group, topics.ALL_READINGS), ReadingBatch, self.enqueue, accept=self.owns)

    def owns(self, topic: str) -> bool:
        """Whether a reading topic's gateway is in this replica's shard (decided before the batch is decoded)."""
        mine = shard_of(topic.rsplit("/", 1)[-1], self._settings.shard_count) == self._settings.shard_index
        if not mine:
            OTHER_SHARD.inc()
        return mine

    async def enqueue(self, batch: ReadingBatch, topic: str) -> asyncio.Future[None]:
        """MQTT handler: queue the batch in its gateway's lane (waits while that lane is full). The
        future completes when the batch is committed, and only then is the message acknowledged."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._lanes[zlib.crc32(batch.gateway_id.encode()) % len(self._lanes)].put((batch, done))
        return done

    async def bill_loop(self, lane: int = 0) -> None:
        """Bill a lane's queued batches: every batch waiting, up to the configured number, in one transaction.

        A lane holds one gateway's batches in arrival order, and a failure never reorders them: a
        transient one (database away, deadlock) is retried in place until it passes, so a reading
        published during an outage is billed before the readings after it (under 尖峰平谷 or tiers
        the order of registers decides which hour is charged). A batch that fails otherwise is
        found by billing the group one by one, and handed back to be parked as a dead letter.
        """
        queue, sequencer = self._lanes[lane], self._sequencers[lane]
        while True:
            group: list[Item] = []
            try:
                async with asyncio.timeout(1.0 if sequencer.holding else None):  # held batches wait for a replay
                    group += await self._admit(sequencer, await queue.get())
            except TimeoutError:
                pass
            while len(group) < self._settings.max_batches_per_transaction and not queue.empty():
                group += await self._admit(sequencer, queue.get_nowait())
            group += await sequencer.due()
            if not group:
                continue
            batches = [batch for batch, _ in group]
            try:
                await self._bill_retrying(batches)
            except Exception as err:
                log.warning("billing %d batches failed (%s); billing them one at a time", len(group), err)
                for batch, done in group:
                    try:
                        await self._bill_retrying([batch])
                    except Exception as one:
                        log.exception("reading batch %s of %s cannot be billed", batch.message_id, batch.gateway_id)
                        _settle(done, one)
                    else:
                        _settle(done, None)
            else:
                for _, done in group:
                    _settle(done, None)

    @staticmethod
    async def _admit(sequencer: Sequencer, item: Item) -> list[Item]:
        """The batches the sequencer lets through; if it cannot tell (database away), this one as it is."""
        try:
            return await sequencer.admit(item)
        except Exception as err:
            log.warning(
                "cannot place batch %s in its gateway's stream (%s); billing it as it comes", item[0].message_id, err
            )
            return [item]

    async def _stream_position(self, key: StreamKey) -> int | None:
        async with self._engine.connect() as conn:
            last: int | None = (
                await conn.execute(
                    text("SELECT last_sequence FROM billing.reading_streams WHERE gateway_id = :g AND epoch = :e"),
                    {"g": key[0], "e": key[1]},
                )
            ).scalar_one_or_none()
        return last

    async def _gap_seen(self, key: StreamKey, first: int, last: int) -> None:
        """Record the gap and ask the collector for its batches again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO billing.reading_gaps (gateway_id, epoch, from_sequence, to_sequence) "
                    "VALUES (:g, :e, :f, :t) ON CONFLICT DO NOTHING"
                ),
                {"g": key[0], "e": key[1], "f": first, "t": last},
            )
            request = ReplayRequest(
                source=self._source, gateway_id=key[0], epoch=key[1], from_sequence=first, to_sequence=last
            )
            await self._outbox.add(conn, topics.gateway_replay(key[0]), request)
        self.notify()

    async def _gap_resolved(self, key: StreamKey, asked: int, first: int, last: int, outcome: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE billing.reading_gaps SET state = :o, from_sequence = :f, to_sequence = :t, "
                    "resolved_at = now() WHERE gateway_id = :g AND epoch = :e AND from_sequence = :a AND state = 'open'"
                ),
                {"g": key[0], "e": key[1], "a": asked, "f": first, "t": last, "o": outcome},
            )

    async def _bill_retrying(self, batches: Sequence[ReadingBatch]) -> None:
        """`bill`, retried with back-off for as long as the failure is transient."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.bill(batches)
                return
            except Exception as err:
                if not is_transient(err):
                    raise
                RETRIED.inc()
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "billing %d batches failed transiently (try %d), retrying: %s", len(batches), attempt, err
                    )
                await asyncio.sleep(backoff(attempt))

    async def on_readings(self, batch: ReadingBatch, topic: str) -> None:
        """Bill one batch now (its own transaction)."""
        await self.bill([batch])

    async def bill(self, batches: Sequence[ReadingBatch]) -> None:
        readings = [r for batch in batches for r in batch.readings]
        with BATCH_SECONDS.time():
            async with self._engine.begin() as conn:
                # The shared flush lock and the tariff table's stamp in one round trip.
                stamp = (
                    await conn.execute(
                        text(
                            "SELECT pg_advisory_xact_lock_shared(:k)::text || "
                            f"coalesce((SELECT {TARIFF_STAMP} FROM billing.tariffs), '')"
                        ),
                        {"k": _FLUSH_LOCK},
                    )
                ).scalar_one()
                work = await self._bill(conn, readings, await self._pricers_at(conn, stamp))
                await self._evaluate_levels(conn, work.accounts)
                await _save_stream_positions(conn, batches)
        COMMITTED.inc(len(readings))
        if self.on_commit is not None:
            self.on_commit(batches)
        self._outbox.notify()

    async def owners(self, conn: AsyncConnection, meter_ids: list[str]) -> dict[str, list[Owner]]:
        """Every owner period of each meter, in time order."""
        result: dict[str, list[Owner]] = {}
        rows = await _fetch(conn, OWNERS_SQL.format(where="b.meter_id = ANY($1::text[])"), meter_ids)
        for row in rows:
            result.setdefault(row["meter_id"], []).append(
                Owner(
                    row["account_id"],
                    _UTILITIES[row["utility"]],
                    row["valid_from"],
                    row["valid_to"],
                    row["household_size"],
                )
            )
        for periods in result.values():
            if len(periods) > 1:
                periods.sort(key=lambda o: o.valid_from or datetime.min.replace(tzinfo=UTC))
        return result

    async def _pricers_at(self, conn: AsyncConnection, stamp: str) -> dict[Utility, Pricer]:
        """The pricers, rebuilt only when the tariff table's stamp changed since they were built."""
        if self._pricers is None or self._pricers[0] != stamp:
            self._pricers = (stamp, await self.pricers(conn))
        return self._pricers[1]

    async def _bill(self, conn: AsyncConnection, readings: Sequence[Reading], pricers: dict[Utility, Pricer]) -> _Work:
        work = _Work()
        owners = await self.owners(conn, sorted({r.meter_id for r in readings}))
        meter_ids = sorted(owners)
        if not meter_ids:
            READINGS.labels("unbound").inc(len(readings))
            return work
        marks = await self._watermarks(conn, meter_ids, lock=True)
        posted: dict[tuple[str, str], datetime | None] = {
            (row[0], row[1]): row[2]
            for row in await _fetch(
                conn,
                "SELECT meter_id, account_id, posted_through FROM billing.carries WHERE meter_id = ANY($1::text[])",
                meter_ids,
            )
        }
        households = sorted({o.account_id for periods in owners.values() for o in periods})
        work.tiers = await self._tier_usage(conn, households, min(r.sampled_at for r in readings))
        changed: dict[tuple[str, str], consumption.Watermark] = {}
        outcomes: collections.Counter[str] = collections.Counter()
        # Oldest first, so a batch that holds several samples of one meter bills each step.
        for reading in sorted(readings, key=lambda r: r.sampled_at):
            periods = owners.get(reading.meter_id)
            if periods is None:
                outcomes["unbound"] += 1
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
            segments = self._rate_deltas(reading, pricer, marks, changed, step)
            if step.billed > 0:
                self._accrue(work, reading.meter_id, utility, periods, step, pricer, segments, posted, previous)
        await self._save(conn, work, list(changed.values()))
        for outcome, count in outcomes.items():
            READINGS.labels(outcome).inc(count)
        return work

    def _rate_deltas(
        self,
        reading: Reading,
        pricer: Pricer,
        marks: dict[tuple[str, str], consumption.Watermark],
        changed: dict[tuple[str, str], consumption.Watermark],
        step: consumption.Advance,
    ) -> dict[str, Decimal] | None:
        """Per-rate quantities from the meter's own tariff registers (尖峰平谷), when it reports them all."""
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

    def _accrue(
        self,
        work: _Work,
        meter_id: str,
        utility: Utility,
        periods: list[Owner],
        step: consumption.Advance,
        pricer: Pricer,
        segments: dict[str, Decimal] | None,
        posted: dict[tuple[str, str], datetime | None],
        previous: consumption.Watermark | None,
    ) -> None:
        start, end = step.interval
        shares = _split_by_owner(periods, start, end, step.billed)
        for owner, share_start, share_end, quantity in shares:
            if owner is None or quantity == 0:
                # Nobody leased the room then: the usage is recorded, nobody is charged.
                self._add_usage(work, meter_id, utility, _hour(share_end), quantity, Decimal(0))
                continue
            version = pricer.version_at(share_start)
            if version is None:
                log.warning("no %s tariff in force at %s: %s consumed unpriced", utility, share_start, quantity)
                self._add_usage(work, meter_id, utility, _hour(share_end), quantity, Decimal(0))
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
        work: _Work,
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
                (meter_id, _open_hour(share_end, through), account, utility.value)
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
                    _open_hour(line.end, through),
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
    def _add_usage(work: _Work, meter_id: str, utility: Utility, hour: datetime, qty: Decimal, cost: Decimal) -> None:
        """Usage nobody is charged for (no owner or no tariff then): recorded, not accrued."""
        work.rows.append((meter_id, hour, None, utility.value) + (None,) * 5 + (cost, qty, None, None, None, None))

    async def pricers(self, conn: AsyncConnection) -> dict[Utility, Pricer]:
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

    @staticmethod
    async def _watermarks(
        conn: AsyncConnection, meter_ids: list[str], *, lock: bool
    ) -> dict[tuple[str, str], consumption.Watermark]:
        # Locked in a stable order: concurrent consumers of the same meters serialise, never deadlock.
        rows = await _fetch(
            conn,
            "SELECT meter_id, register, value, sampled_at, multiplier, register_max FROM billing.watermarks "
            "WHERE meter_id = ANY($1::text[]) ORDER BY meter_id, register" + (" FOR UPDATE" if lock else ""),
            meter_ids,
        )
        return {(row[0], row[1]): consumption.Watermark(*row) for row in rows}

    @staticmethod
    async def _tier_usage(
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

    async def _save(self, conn: AsyncConnection, work: _Work, marks: list[consumption.Watermark]) -> None:
        """Watermarks, tier usage, charge lines, accruals and usage in one statement (one round trip).

        Each column travels as one array literal (see `store.array`): the driver then encodes one
        string per column instead of every element, which was most of the writes' CPU.
        """
        tiers = sorted(work.tiers_changed)
        if not (marks or tiers or work.rows):
            await self._hold(conn, work.held)
            return
        stamps = _Stamps()
        encode: dict[str, Callable[[Sequence[Any]], str]] = {"text": store.text_array, "timestamptz": stamps.array}
        params: dict[str, str] = {}
        for spec, rows in (
            (_MARKS, [(w.meter_id, w.register, w.value, w.sampled_at, w.multiplier, w.register_max) for w in marks]),
            (_TIERS, [(*k, work.tiers[k]) for k in tiers]),
            (_ROWS, work.rows),
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

    # --- posting accruals to the ledger ---------------------------------------------------------

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval_seconds)
            try:
                await self.flush(before=_hour(datetime.now(UTC)))
            except Exception:
                log.exception("posting accruals failed; will retry")

    async def flush(self, *, before: datetime) -> int:
        """Post every accrual of an hour that ended before `before`: one ledger transaction per meter-hour."""
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FLUSH_LOCK})
            rows = (
                await conn.execute(
                    text(
                        "DELETE FROM billing.accruals WHERE hour < :b "
                        "RETURNING meter_id, hour, account_id, utility, amount"
                    ),
                    {"b": before},
                )
            ).all()
            if not rows:
                return 0
            carries: dict[tuple[str, str], list[Any]] = {
                (row.meter_id, row.account_id): [row.remainder, row.utility, row.posted_through]
                for row in await conn.execute(
                    text(
                        "SELECT meter_id, account_id, utility, remainder, posted_through FROM billing.carries "
                        "WHERE meter_id = ANY(:m) ORDER BY meter_id, account_id FOR UPDATE"
                    ),
                    {"m": sorted({r.meter_id for r in rows})},
                )
            }
            households = sorted({r.account_id for r in rows if not r.account_id.startswith(COMMON)})
            shared = await self.balance_modes(conn, households)
            purses = {
                (r.account_id, r.utility): self._purse(r.account_id, Utility(r.utility), shared)
                for r in rows
                if not r.account_id.startswith(COMMON)
            }
            subsidy_left = await store.balances(conn, sorted({store.subsidy(p) for p in purses.values()}))
            postings: list[store.Transaction] = []
            for row in sorted(rows, key=lambda r: (r.meter_id, r.account_id, r.hour)):
                carry = carries.setdefault((row.meter_id, row.account_id), [Decimal(0), row.utility, None])
                fen, carry[0] = split_cents(carry[0] + row.amount)
                carry[2] = row.hour if carry[2] is None else max(carry[2], row.hour)
                if fen == 0:
                    continue
                revenue = store.Entry(REVENUE[Utility(row.utility)], fen, row.meter_id, row.hour)
                if row.account_id.startswith(COMMON):
                    pool = "shared:" + row.account_id.removeprefix(COMMON)
                    entries = [store.Entry(pool, -fen, row.meter_id, row.hour), revenue]
                else:
                    purse = purses[(row.account_id, row.utility)]
                    sub = store.subsidy(purse)
                    split = ledger.split_charge(fen, subsidy_left[sub])
                    subsidy_left[sub] -= split.from_subsidy
                    entries = [
                        e
                        for e in (
                            store.Entry(purse, -split.from_paid, row.meter_id, row.hour),
                            store.Entry(sub, -split.from_subsidy, row.meter_id, row.hour),
                        )
                        if e.amount
                    ] + [revenue]
                postings.append(store.Transaction("consumption", entries))
            await store.post_many(conn, postings)
            keys = sorted(carries)
            await conn.execute(
                text(
                    "INSERT INTO billing.carries (meter_id, account_id, utility, remainder, posted_through) "
                    "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:a AS text[]), CAST(:u AS text[]), "
                    "CAST(:r AS numeric[]), CAST(:p AS timestamptz[])) "
                    "ON CONFLICT (meter_id, account_id) DO UPDATE SET remainder = EXCLUDED.remainder, "
                    "posted_through = EXCLUDED.posted_through"
                ),
                {
                    "m": [k[0] for k in keys],
                    "a": [k[1] for k in keys],
                    "u": [carries[k][1] for k in keys],
                    "r": [carries[k][0] for k in keys],
                    "p": [carries[k][2] for k in keys],
                },
            )
        return len(postings)

    # --- purses, balances and levels ------------------------------------------------------------

    @staticmethod
    async def balance_modes(conn: AsyncConnection, account_ids: list[str]) -> dict[str, bool]:
        """Per account: True when water and electricity share one balance (水电一卡通), the default."""
        rows = await conn.execute(
            text(
                "SELECT a.account_id, coalesce(e.shared_balance, true) AS shared FROM billing.accounts a "
                "LEFT JOIN billing.estates e USING (estate_id) WHERE a.account_id = ANY(:a)"
            ),
            {"a": account_ids},
        )
        return {row.account_id: row.shared for row in rows}

    @staticmethod
    def _purse(account_id: str, utility: Utility, shared: dict[str, bool]) -> str:
        return store.purse(account_id, None if shared.get(account_id, True) else utility)

    async def purse_of(self, conn: AsyncConnection, account_id: str, utility: Utility | None) -> str:
        """The ledger account holding the household's money for `utility` (shared purse if utility is None)."""
        shared = await self.balance_modes(conn, [account_id])
        if account_id not in shared:
            raise NotFound(f"no account {account_id}")
        if shared[account_id]:
            return store.household(account_id)
        if utility is None:
            raise BillingError(
                "this estate keeps separate water and electricity balances: name the utility",
                code="utility_required",
                status_code=422,
            )
        return store.purse(account_id, utility)

    @staticmethod
    def _purses(account_id: str, shared: bool) -> list[tuple[str, Utility | None]]:
        if shared:
            return [("all", None)]
        return [(u.value, u) for u in Utility]

    async def available(
        self, conn: AsyncConnection, account_ids: list[str]
    ) -> dict[tuple[str, str], dict[str, Decimal]]:
        """Per (account, purse): paid and subsidy balances, unposted charges and the available credit."""
        shared = await self.balance_modes(conn, account_ids)
        names: list[str] = []
        for account in account_ids:
            for _, utility in self._purses(account, shared.get(account, True)):
                purse = store.purse(account, utility)
                names += [purse, store.subsidy(purse)]
        balances = await store.balances(conn, names)
        owed: dict[tuple[str, str], Decimal] = {}
        rows = await conn.execute(
            text(
                "SELECT account_id, utility, sum(amount) AS owed FROM ("
                "  SELECT account_id, utility, amount FROM billing.accruals WHERE account_id = ANY(:a)"
                "  UNION ALL SELECT account_id, utility, remainder FROM billing.carries WHERE account_id = ANY(:a)"
                ") o GROUP BY account_id, utility"
            ),
            {"a": account_ids},
        )
        for row in rows:
            owed[(row.account_id, row.utility)] = row.owed
        result: dict[tuple[str, str], dict[str, Decimal]] = {}
        for account in account_ids:
            for name, utility in self._purses(account, shared.get(account, True)):
                purse = store.purse(account, utility)
                utilities = [utility] if utility is not None else list(Utility)
                pending = sum((owed.get((account, u.value), Decimal(0)) for u in utilities), Decimal(0))
                paid, subsidy = balances[purse], balances[store.subsidy(purse)]
                result[(account, name)] = {
                    "paid": paid,
                    "subsidy": subsidy,
                    "pending": pending,
                    "available": paid + subsidy - pending,
                }
        return result

    async def evaluate_levels(self, conn: AsyncConnection, account_ids: set[str]) -> None:
        """Re-classify each purse of the accounts and queue one event per level change (call inside the transaction)."""
        await self._evaluate_levels(conn, account_ids)

    async def _evaluate_levels(self, conn: AsyncConnection, account_ids: set[str]) -> None:
        ordered = sorted(a for a in account_ids if not a.startswith(COMMON))
        if not ordered:
            return
        accounts = (
            await conn.execute(
                text(
                    "SELECT account_id, level, sequence, low_1, low_2, grace_credit FROM billing.accounts "
                    "WHERE account_id = ANY(:a) ORDER BY account_id FOR UPDATE"
                ),
                {"a": ordered},
            )
        ).all()
        levels = {
            (row.account_id, row.purse): BalanceLevel(row.level)
            for row in await conn.execute(
                text("SELECT account_id, purse, level FROM billing.purse_levels WHERE account_id = ANY(:a)"),
                {"a": ordered},
            )
        }
        available = await self.available(conn, ordered)
        by_account: dict[str, list[tuple[str, dict[str, Decimal]]]] = {}
        for (account, purse), figures in available.items():
            by_account.setdefault(account, []).append((purse, figures))
        meters: dict[str, list[MeterRef]] | None = None
        events: list[tuple[str, Any, bool]] = []
        level_rows: list[tuple[str, str, str, str | None]] = []
        account_rows: list[tuple[str, str, int]] = []
        for acc in accounts:
            sequence = acc.sequence
            purses = by_account.get(acc.account_id, [])
            worst = BalanceLevel.OK
            for purse, figures in purses:
                # A shared purse inherits the level the account had before purses existed.
                previous = levels.get((acc.account_id, purse), BalanceLevel(acc.level) if purse == "all" else None)
                thresholds = ledger.BalanceThresholds(level1=acc.low_1, level2=acc.low_2, grace_credit=acc.grace_credit)
                level = ledger.classify_balance(
                    figures["available"], previous, thresholds, self._settings.restore_hysteresis
                )
                if _SEVERITY[level] > _SEVERITY[worst]:
                    worst = level
                if level is (previous or BalanceLevel.OK) and (acc.account_id, purse) in levels:
                    continue
                if level is (previous or BalanceLevel.OK):
                    level_rows.append((acc.account_id, purse, level.value, None))
                    continue
                # An improvement that is not a restoration (low_2 → ok) is still announced, so the
                # low-balance alarm can clear and displays follow.
                kinds = ledger.transition_events(previous, level) or [BalanceEventKind.CHANGED]
                if meters is None:
                    meters = await self._meters_of(conn, ordered)
                refs = tuple(m for m in meters.get(acc.account_id, []) if purse in ("all", m.utility.value))
                for kind in kinds:
                    sequence += 1
                    event = BalanceEvent(
                        source=self._source,
                        account_id=acc.account_id,
                        kind=kind,
                        level=level,
                        balance=figures["available"].quantize(Decimal("0.01")),
                        sequence=sequence,
                        meters=refs,
                    )
                    events.append((topics.balance(acc.account_id), event, False))
                    log.info("account %s (%s): %s (available %s)", acc.account_id, purse, kind, event.balance)
                # The purse's last event is what `reannounce` publishes again (the one that decides supply).
                level_rows.append((acc.account_id, purse, level.value, events[-1][1].model_dump_json()))
            if sequence != acc.sequence or worst.value != acc.level:
                account_rows.append((acc.account_id, worst.value, sequence))
        if level_rows:
            await conn.execute(
                text(
                    "INSERT INTO billing.purse_levels (account_id, purse, level, last_event) "
                    "SELECT * FROM unnest(CAST(:a AS text[]), CAST(:p AS text[]), CAST(:l AS text[]), "
                    "CAST(:e AS jsonb[])) ON CONFLICT (account_id, purse) DO UPDATE SET level = EXCLUDED.level, "
                    "last_event = coalesce(EXCLUDED.last_event, billing.purse_levels.last_event), changed_at = now()"
                ),
                {
                    "a": [r[0] for r in level_rows],
                    "p": [r[1] for r in level_rows],
                    "l": [r[2] for r in level_rows],
                    "e": [r[3] for r in level_rows],
                },
            )
        if account_rows:
            await conn.execute(
                text(
                    "UPDATE billing.accounts a SET level = u.l, sequence = u.s FROM unnest(CAST(:a AS text[]), "
                    "CAST(:l AS text[]), CAST(:s AS bigint[])) AS u(a, l, s) WHERE a.account_id = u.a"
                ),
                {
                    "a": [r[0] for r in account_rows],
                    "l": [r[1] for r in account_rows],
                    "s": [r[2] for r in account_rows],
                },
            )
        await self._outbox.add_many(conn, events)

    async def reannounce_loop(self) -> None:
        """Publish every purse's last balance event again, now and then (see `reannounce`): one replica
        a round, the one that takes the advisory lock (the others would only publish the same again)."""
        if not self._settings.level_reannounce_seconds:
            return
        while True:
            await asyncio.sleep(self._settings.level_reannounce_seconds)
            try:
                async with self._engine.connect() as lock:
                    taken = (
                        await lock.execute(text("SELECT pg_try_advisory_lock(hashtext('billing-reannounce'))"))
                    ).scalar_one()
                    await lock.commit()
                    if not taken:
                        continue
                    try:
                        await self.reannounce()
                    finally:
                        await lock.execute(text("SELECT pg_advisory_unlock(hashtext('billing-reannounce'))"))
                        await lock.commit()
            except Exception as err:
                log.warning("re-announcing balance levels failed; next round: %s", err)

    async def reannounce(self, *, page: int = 1000) -> int:
        """Anti-entropy for balance levels: queue each purse's last event again — with its sequence
        and message id — while its level is not ok, or for a while after it changed. A consumer
        that applied it skips it (control by sequence per meter, webhooks by message id); one that
        lost it (a restoration control never saw) converges. Returns how many were queued."""
        after, queued = ("", ""), 0
        while True:
            async with self._engine.begin() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT account_id, purse, last_event FROM billing.purse_levels "
                            "WHERE last_event IS NOT NULL "
                            "AND (level <> 'ok' OR changed_at >= now() - make_interval(secs => :window)) "
                            "AND (account_id, purse) > (:account, :purse) ORDER BY account_id, purse LIMIT :n"
                        ),
                        {
                            "window": self._settings.level_reannounce_hours * 3600,
                            "account": after[0],
                            "purse": after[1],
                            "n": page,
                        },
                    )
                ).all()
                events: list[tuple[str, Any, bool]] = [
                    (topics.balance(r.account_id), BalanceEvent.model_validate(r.last_event), False) for r in rows
                ]
                await self._outbox.add_many(conn, events)
            queued += len(events)
            if events:
                self.notify()
            if len(rows) < page:
                REANNOUNCED.inc(queued)
                return queued
            after = (rows[-1].account_id, rows[-1].purse)

    @staticmethod
    async def _meters_of(conn: AsyncConnection, account_ids: list[str]) -> dict[str, list[MeterRef]]:
        """Meters each account pays for now."""
        result: dict[str, list[MeterRef]] = {}
        rows = await conn.execute(
            text(
                f"SELECT * FROM ({OWNERS_SQL.format(where='true')}) o WHERE o.account_id = ANY(:a) "
                "AND (o.valid_from IS NULL OR o.valid_from <= now()) AND (o.valid_to IS NULL OR o.valid_to > now()) "
                "ORDER BY o.meter_id"
            ),
            {"a": account_ids},
        )
        for row in rows:
            result.setdefault(row.account_id, []).append(MeterRef(meter_id=row.meter_id, utility=Utility(row.utility)))
        return result

    # --- payments and subsidies -----------------------------------------------------------------

    async def top_up(
        self,
        account_id: str,
        amount: Decimal,
        channel: str,
        reference: str | None,
        idempotency_key: str,
        *,
        utility: Utility | None = None,
    ) -> dict[str, Any]:
        """Credit an account once per idempotency key; a replay returns the original payment."""
        if amount <= 0:
            raise BillingError("amount must be positive", code="invalid_amount", status_code=422)
        if channel not in CHANNEL_ACCOUNTS:
            raise BillingError(f"unknown channel {channel}", code="invalid_channel", status_code=422)
        content = f"{account_id}|{amount}|{channel}|{reference or ''}" + (f"|{utility.value}" if utility else "")
        fingerprint = hashlib.sha256(content.encode()).hexdigest()
        async with self._engine.begin() as conn:
            # Serialise concurrent retries of the same key before looking for an earlier result.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": idempotency_key})
            existing = (
                await conn.execute(
                    text("SELECT * FROM billing.payments WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
            ).first()
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different payment", code="idempotency_conflict")
                return {**self._payment_out(existing._asdict()), "replayed": True}
            purse = await self.purse_of(conn, account_id, utility)
            txn_id = await store.post(
                conn,
                "topup",
                [store.Entry(purse, amount), store.Entry(CHANNEL_ACCOUNTS[channel], -amount)],
                memo=f"{channel} {reference or ''}".strip(),
            )
            balance = (await store.balances(conn, [purse]))[purse]
            payment = {
                "payment_id": uuid.uuid4(),
                "account_id": account_id,
                "channel": channel,
                "amount": amount,
                "reference": reference,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "txn_id": txn_id,
                "balance_after": balance,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.payments (payment_id, account_id, channel, amount, reference, idempotency_key, "
                    "fingerprint, txn_id, balance_after) VALUES (:payment_id, :account_id, :channel, :amount, :reference, "
                    ":idempotency_key, :fingerprint, :txn_id, :balance_after)"
                ),
                payment,
            )
            await self._evaluate_levels(conn, {account_id})
        self._outbox.notify()
        return {**self._payment_out(payment), "replayed": False}

    @staticmethod
    def _payment_out(row: dict[str, Any]) -> dict[str, Any]:
        keys = ("payment_id", "account_id", "amount", "channel", "reference", "balance_after", "txn_id")
        return {k: row[k] for k in keys}

    async def grant_subsidy(
        self, account_id: str, amount: Decimal, program: str, idempotency_key: str, *, utility: Utility | None = None
    ) -> dict[str, Any]:
        """Credit subsidy (补贴) from the subsidy fund, once per key; charges draw on it before paid credit."""
        if amount <= 0:
            raise BillingError("amount must be positive", code="invalid_amount", status_code=422)
        fingerprint = hashlib.sha256(f"{account_id}|{amount}|{program}|{utility or ''}".encode()).hexdigest()
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": idempotency_key})
            existing = (
                await conn.execute(
                    text("SELECT * FROM billing.subsidies WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
            ).first()
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("idempotency key already used for a different subsidy", code="idempotency_conflict")
                return {**self._subsidy_out(existing._asdict()), "replayed": True}
            account = store.subsidy(await self.purse_of(conn, account_id, utility))
            txn_id = await store.post(
                conn,
                "subsidy_credit",
                [store.Entry(account, amount), store.Entry(ledger.SUBSIDY_FUND, -amount)],
                memo=program,
            )
            row = {
                "subsidy_id": uuid.uuid4(),
                "account_id": account_id,
                "amount": amount,
                "program": program,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "txn_id": txn_id,
            }
            await conn.execute(
                text(
                    "INSERT INTO billing.subsidies (subsidy_id, account_id, amount, program, idempotency_key, fingerprint, "
                    "txn_id) VALUES (:subsidy_id, :account_id, :amount, :program, :idempotency_key, :fingerprint, :txn_id)"
                ),
                row,
            )
            await self._evaluate_levels(conn, {account_id})
        self._outbox.notify()
        return {**self._subsidy_out(row), "replayed": False}

    @staticmethod
    def _subsidy_out(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("subsidy_id", "account_id", "amount", "program", "txn_id")}

    # --- corrections (冲正) ----------------------------------------------------------------------

    async def reverse(self, txn_id: uuid.UUID, operator: str, reason: str) -> dict[str, Any]:
        """Post the reversing entry of a ledger transaction, once, with who and why."""
        if not operator.strip() or not reason.strip():
            raise BillingError("an operator and a reason are required", code="invalid_correction", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"reverse:{txn_id}"})
            entries = (
                await conn.execute(
                    text(
                        "SELECT ledger_account, amount, kind, meter_id, period_start FROM billing.ledger_entries "
                        "WHERE txn_id = :t ORDER BY entry_id"
                    ),
                    {"t": txn_id},
                )
            ).all()
            if not entries:
                raise NotFound(f"no ledger transaction {txn_id}")
            if entries[0].kind == "reversal":
                raise BillingError("a reversal is not reversed; post a new entry", code="invalid_correction")
            if (
                await conn.execute(text("SELECT 1 FROM billing.corrections WHERE reverses = :t"), {"t": txn_id})
            ).first() is not None:
                raise Conflict(f"transaction {txn_id} is already reversed", code="already_reversed")
            reversal = await store.post(
                conn,
                "reversal",
                [store.Entry(e.ledger_account, -e.amount, e.meter_id, e.period_start) for e in entries],
                memo=f"冲正 {reason}",
                reverses=txn_id,
            )
            await conn.execute(
                text("INSERT INTO billing.corrections (txn_id, reverses, operator, reason) VALUES (:t, :r, :o, :why)"),
                {"t": reversal, "r": txn_id, "o": operator, "why": reason},
            )
            households = {e.ledger_account.split(":")[1] for e in entries if e.ledger_account.startswith("household:")}
            await self._evaluate_levels(conn, households)
        self._outbox.notify()
        return {"txn_id": reversal, "reverses": txn_id, "operator": operator, "reason": reason}

    async def corrections(self, account_id: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.txn_id, c.reverses, c.operator, c.reason, c.created_at FROM billing.corrections c "
                    "WHERE CAST(:a AS text) IS NULL OR EXISTS (SELECT 1 FROM billing.ledger_entries e WHERE e.txn_id = c.txn_id "
                    "AND e.ledger_account LIKE 'household:' || :a || '%') ORDER BY c.created_at DESC LIMIT :n"
                ),
                {"a": account_id, "n": limit},
            )
            return [r._asdict() for r in rows]

    # --- meter events ---------------------------------------------------------------------------

    async def meter_event(
        self, meter_id: str, event: consumption.MeterEvent, operator: str, reason: str
    ) -> dict[str, Any]:
        """Apply an explicit meter event (replacement, CT-ratio change, rollover) and bill its tail."""
        if not operator.strip() or not reason.strip():
            raise BillingError("an operator and a reason are required", code="invalid_event", status_code=422)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _FLUSH_LOCK})
            owners = await self.owners(conn, [meter_id])
            if meter_id not in owners:
                raise NotFound(f"meter {meter_id} is not bound")
            utility = owners[meter_id][0].utility
            register = REGISTER[utility]
            marks = await self._watermarks(conn, [meter_id], lock=True)
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
            work = _Work()
            pricers = await self.pricers(conn)
            posted = {
                (row.meter_id, row.account_id): row.posted_through
                for row in await conn.execute(
                    text("SELECT meter_id, account_id, posted_through FROM billing.carries WHERE meter_id = :m"),
                    {"m": meter_id},
                )
            }
            work.tiers = await self._tier_usage(
                conn, sorted({o.account_id for o in owners[meter_id]}), step.interval[0]
            )
            if step.billed > 0:
                self._accrue(work, meter_id, utility, owners[meter_id], step, pricers[utility], None, posted, mark)
            await self._save(conn, work, changed)
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
            await self._evaluate_levels(conn, work.accounts)
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

    # --- set-up and queries ---------------------------------------------------------------------

    async def put_account(
        self,
        account_id: str,
        name: str,
        low_1: Decimal,
        low_2: Decimal,
        grace: Decimal,
        estate_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> None:
        if not low_1 >= low_2 >= 0 or grace < 0:
            raise BillingError(
                "thresholds must satisfy low_1 ≥ low_2 ≥ 0 and grace ≥ 0", code="invalid_thresholds", status_code=422
            )
        statement = text(
            "INSERT INTO billing.accounts (account_id, name, low_1, low_2, grace_credit, estate_id) "
            "VALUES (:a, :n, :l1, :l2, :g, :e) ON CONFLICT (account_id) DO UPDATE SET name = EXCLUDED.name, "
            "low_1 = EXCLUDED.low_1, low_2 = EXCLUDED.low_2, grace_credit = EXCLUDED.grace_credit, "
            "estate_id = coalesce(EXCLUDED.estate_id, billing.accounts.estate_id)"
        )
        params = {"a": account_id, "n": name, "l1": low_1, "l2": low_2, "g": grace, "e": estate_id}
        if conn is not None:
            await conn.execute(statement, params)
            return
        async with self._engine.begin() as own:
            if (
                estate_id is not None
                and (
                    await own.execute(text("SELECT 1 FROM billing.estates WHERE estate_id = :e"), {"e": estate_id})
                ).first()
                is None
            ):
                raise NotFound(f"no estate {estate_id}")
            await own.execute(statement, params)

    async def bind_meter(
        self, meter_id: str, account_id: str, utility: Utility, effective_from: datetime | None = None
    ) -> None:
        """Bind a meter to an account from `effective_from` on (from the first reading if it was never bound)."""
        async with self._engine.begin() as conn:
            if (
                await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first() is None:
                raise NotFound(f"no account {account_id}")
            await self.rebind(conn, meter_id, utility, effective_from, account_id=account_id)

    async def rebind(
        self,
        conn: AsyncConnection,
        meter_id: str,
        utility: Utility,
        effective_from: datetime | None,
        *,
        account_id: str | None = None,
        room_id: str | None = None,
        estate_id: str | None = None,
    ) -> None:
        """Close the meter's open binding at `effective_from` and open the new one (a no-op if unchanged)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"binding:{meter_id}"})
        rows = (
            await conn.execute(
                text(
                    "SELECT binding_id, account_id, room_id, estate_id, utility, valid_from, valid_to "
                    "FROM billing.meter_bindings WHERE meter_id = :m ORDER BY valid_from NULLS FIRST"
                ),
                {"m": meter_id},
            )
        ).all()
        current = next((r for r in rows if r.valid_to is None), None)
        if current is not None and (current.account_id, current.room_id, current.estate_id, current.utility) == (
            account_id,
            room_id,
            estate_id,
            utility.value,
        ):
            return
        start = effective_from
        if rows:
            start = start or datetime.now(UTC)
            latest = max((r.valid_from for r in rows if r.valid_from is not None), default=None)
            if latest is not None and start <= latest:
                raise Conflict(
                    f"meter {meter_id} already has a binding from {latest.isoformat()}; a new one must start later",
                    code="binding_order",
                )
            if current is not None:
                await conn.execute(
                    text("UPDATE billing.meter_bindings SET valid_to = :t WHERE binding_id = :b"),
                    {"t": start, "b": current.binding_id},
                )
        await conn.execute(
            text(
                "INSERT INTO billing.meter_bindings (meter_id, account_id, room_id, estate_id, utility, valid_from) "
                "VALUES (:m, :a, :r, :e, :u, :f)"
            ),
            {"m": meter_id, "a": account_id, "r": room_id, "e": estate_id, "u": utility.value, "f": start},
        )

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
            pricer = (await self.pricers(conn))[utility]
        return [
            {
                "tariff_id": v.tariff_id,
                "utility": utility,
                "effective_from": v.domain.effective_from,
                "components": COMPONENTS.dump_python(v.components, mode="json"),
            }
            for v in pricer.versions
        ]

    async def account(self, account_id: str) -> dict[str, Any]:
        """The account, its balance per purse (paid, subsidy, unposted charges, available), in one round trip."""
        async with self._engine.connect() as conn:
            acc = (
                await conn.execute(text(ACCOUNT_SQL), {"a": account_id, "names": store.purses_of(account_id)})
            ).first()
        if acc is None:
            raise NotFound(f"no account {account_id}")
        balances, owed = _decimals(acc.balances), _decimals(acc.owed)
        purses = [("all", None)] if acc.shared else [(u.value, u) for u in Utility]
        figures: list[dict[str, Any]] = []
        for name, utility in sorted(purses, key=lambda p: p[0]):
            purse = store.purse(account_id, utility)
            paid = balances.get(purse, Decimal("0.00"))
            subsidy = balances.get(store.subsidy(purse), Decimal("0.00"))
            utilities = [utility] if utility is not None else list(Utility)
            pending = sum((owed.get(u.value, Decimal(0)) for u in utilities), Decimal(0))
            figures.append(
                {
                    "purse": name,
                    "paid": paid,
                    "subsidy": subsidy,
                    "pending": pending,
                    "available": paid + subsidy - pending,
                }
            )
        paid_total = sum((f["paid"] for f in figures), Decimal("0.00"))
        subsidy_total = sum((f["subsidy"] for f in figures), Decimal("0.00"))
        return {
            "account_id": account_id,
            "name": acc.name,
            "estate_id": acc.estate_id,
            "balance": paid_total + subsidy_total,
            "paid_balance": paid_total,
            "subsidy_balance": subsidy_total,
            "available": sum((f["available"] for f in figures), Decimal(0)),
            "level": acc.level,
            "sequence": acc.sequence,
            "grace_credit": acc.grace_credit,
            "purses": figures,
        }

    async def ledger(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT entry_id, txn_id, ledger_account, amount, kind, meter_id, period_start, reverses, memo, "
                    "created_at FROM billing.ledger_entries WHERE ledger_account = :a OR ledger_account LIKE :p "
                    "ORDER BY entry_id DESC LIMIT :n"
                ),
                {"a": store.household(account_id), "p": store.household(account_id) + ":%", "n": limit},
            )
            return [r._asdict() for r in rows]


async def _save_stream_positions(conn: AsyncConnection, batches: Sequence[ReadingBatch]) -> None:
    """Each gateway stream's last sequence billed, in the transaction that billed it."""
    last: dict[StreamKey, int] = {}
    for batch in batches:
        if batch.epoch is not None and batch.sequence is not None:
            key = (batch.gateway_id, batch.epoch)
            last[key] = max(last.get(key, 0), batch.sequence)
    if not last:
        return
    keys = sorted(last)
    await conn.execute(
        text(
            "INSERT INTO billing.reading_streams (gateway_id, epoch, last_sequence) "
            "SELECT * FROM unnest(CAST(:g AS text[]), CAST(:e AS text[]), CAST(:s AS bigint[])) "
            "ON CONFLICT (gateway_id, epoch) DO UPDATE SET updated_at = now(), "
            "last_sequence = greatest(billing.reading_streams.last_sequence, EXCLUDED.last_sequence)"
        ),
        {"g": [k[0] for k in keys], "e": [k[1] for k in keys], "s": [last[k] for k in keys]},
    )


def _settle(done: asyncio.Future[None], err: BaseException | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(err)


def _decimals(value: Any) -> dict[str, Decimal]:
    found = json.loads(value) if isinstance(value, str) else value
    return {k: Decimal(v) for k, v in found.items()}


def _split_by_owner(
    periods: list[Owner], start: datetime, end: datetime, quantity: Decimal
) -> list[tuple[Owner | None, datetime, datetime, Decimal]]:
    """Split an interval's quantity between the owners of the meter pro rata by time; None = nobody."""
    if start == end:
        owner = next((o for o in periods if o.covers(end)), None)
        return [(owner, start, end, quantity)]
    spans: list[tuple[Owner | None, datetime, datetime]] = []
    cursor = start
    for owner in periods:
        low = max(start, owner.valid_from) if owner.valid_from else start
        high = min(end, owner.valid_to) if owner.valid_to else end
        if high <= low:
            continue
        if low > cursor:
            spans.append((None, cursor, low))
        spans.append((owner, low, high))
        cursor = max(cursor, high)
    if cursor < end:
        spans.append((None, cursor, end))
    if len(spans) == 1:
        return [(spans[0][0], start, end, quantity)]
    parts = apportion(quantity, [microseconds(high - low) for _, low, high in spans])
    return [(owner, low, high, part) for (owner, low, high), part in zip(spans, parts, strict=True)]


async def _fetch(conn: AsyncConnection, sql: str, *args: object) -> list[Any]:
    """Rows straight from the driver, in the connection's transaction: the reading path's large reads
    skip SQLAlchemy's row objects. Parameters are positional ($1, $2 …)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        # SQLAlchemy opens its transaction on the first statement it runs: make sure that happened.
        await conn.execute(text("SELECT 1"))
    rows: list[Any] = await driver.fetch(sql, *args)
    return rows


class _Stamps:
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
