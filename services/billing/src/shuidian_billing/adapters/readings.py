"""The reading pipeline: reading batches from MQTT into per-gateway lanes, put in their stream's order,
billed many at a time in one transaction each, retried while the failure is transient.

Readings arrive through `enqueue` (the MQTT handler) into one of `BILLING_LANES` queues chosen by
gateway; each lane's worker takes every batch queued so far, up to
`BILLING_MAX_BATCHES_PER_TRANSACTION`, and bills them in one transaction. `subscribe` wires the
MQTT side: with `BILLING_SHARD_COUNT` > 1 a replica takes only its shard of the gateways, chosen
on the topic before the payload is decoded (`shard_of`).

Readings of meters billing has no owner for — never bound, or bound only to rooms never leased —
are not billed (there is nobody to charge and no watermark is opened). They are counted
(`billing_unknown_meter_readings_total`), listed per meter in memory (`UnknownMeters`,
`GET /v1/unknown-meters`) and, with `BILLING_UNKNOWN_METER_NOTICE`, announced once per meter and
process as a `ReadingHeld` with reason `unknown_meter`, queued in the billing transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.charging import Charger
from shuidian_billing.adapters.levels import BalanceLevels
from shuidian_billing.adapters.sql import FLUSH_LOCK, TARIFF_STAMP
from shuidian_billing.adapters.streams import Item, Sequencer, StreamKey
from shuidian_billing.settings import BillingSettings
from shuidian_kit.mqtt import MqttLink
from shuidian_kit.outbox import Outbox
from shuidian_kit.retry import backoff, is_transient
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, ReadingHeld, ReplayRequest

log = logging.getLogger(__name__)

COMMITTED = Counter("billing_readings_committed_total", "readings whose billing transaction committed")
BATCH_SECONDS = Histogram("billing_batch_seconds", "time to bill one transaction of reading batches")
OTHER_SHARD = Counter("billing_reading_batches_other_shard_total", "reading batches left to another billing shard")
RETRIED = Counter("billing_transactions_retried_total", "billing transactions retried after a transient failure")
UNKNOWN_METER_READINGS = Counter(
    "billing_unknown_meter_readings_total", "readings of meters billing has no owner for (not billed)"
)
UNKNOWN_METERS = Gauge("billing_unknown_meters", "meters with readings but no owner, seen by this process")
SUBSCRIPTION_GROUP = "billing"
UNKNOWN_METER_REASON = "unknown_meter"


@dataclass(slots=True)
class UnknownMeter:
    """What this process saw of one meter it has no owner for."""

    meter_id: str
    utility: str
    gateway_id: str
    readings: int
    first_seen: datetime
    last_seen: datetime
    last_sampled_at: datetime
    last_registers: dict[str, Decimal]


class UnknownMeters:
    """Meters whose readings billing received but could not bill for want of an owner, in memory (per
    process, since its start), the most recently seen `limit` of them."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._meters: dict[str, UnknownMeter] = {}
        self.since = datetime.now(UTC)

    def unseen(self, readings: Sequence[Reading]) -> list[Reading]:
        """The first reading of each meter not listed yet (whose notice is still to be sent)."""
        first: dict[str, Reading] = {}
        for reading in readings:
            if reading.meter_id not in self._meters:
                first.setdefault(reading.meter_id, reading)
        return list(first.values())

    def record(self, readings: Sequence[Reading], gateway_of: dict[str, str], now: datetime) -> None:
        """Count readings of unknown meters (after their transaction committed)."""
        for reading in sorted(readings, key=lambda r: r.sampled_at):
            known = self._meters.pop(reading.meter_id, None)  # re-inserted: the dict stays in last-seen order
            if known is None:
                known = UnknownMeter(reading.meter_id, reading.utility.value, "", 0, now, now, reading.sampled_at, {})
            known.readings += 1
            known.last_seen = now
            known.gateway_id = gateway_of.get(reading.meter_id, known.gateway_id)
            if reading.sampled_at >= known.last_sampled_at:
                known.last_sampled_at, known.last_registers = reading.sampled_at, dict(reading.registers)
            self._meters[reading.meter_id] = known
        while len(self._meters) > self._limit:
            del self._meters[next(iter(self._meters))]  # the least recently seen
        UNKNOWN_METER_READINGS.inc(len(readings))
        UNKNOWN_METERS.set(len(self._meters))

    @property
    def listed(self) -> int:
        return len(self._meters)

    def forget_billed(self, readings: Sequence[Reading], unbound: Sequence[Reading]) -> None:
        """Drop the meters that have an owner now (their readings were billed in this transaction)."""
        still = {r.meter_id for r in unbound}
        for reading in readings:
            if reading.meter_id not in still:
                self._meters.pop(reading.meter_id, None)
        UNKNOWN_METERS.set(len(self._meters))

    def listing(self) -> list[UnknownMeter]:
        """Most recently seen first."""
        return list(reversed(self._meters.values()))


def shard_of(gateway_id: str, shard_count: int) -> int:
    """The billing shard of a gateway: a stable hash, the same in every process, host and release."""
    return int.from_bytes(hashlib.blake2b(gateway_id.encode(), digest_size=8).digest(), "big") % shard_count


class ReadingPipeline:
    """Lanes, stream order and the billing transaction of reading batches."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        settings: BillingSettings,
        source: str,
        charger: Charger,
        levels: BalanceLevels,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._settings = settings
        self._source = source
        self._charger = charger
        self._levels = levels
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
        self.unknown = UnknownMeters()

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
        self._outbox.notify()

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
                        {"k": FLUSH_LOCK},
                    )
                ).scalar_one()
                work = await self._charger.charge(conn, readings, await self._charger.pricers_at(conn, stamp))
                await self._levels.evaluate_levels(conn, work.accounts)
                await _save_stream_positions(conn, batches)
                if work.unbound and self._settings.unknown_meter_notice:
                    await self._announce_unknown(conn, self.unknown.unseen(work.unbound))
        COMMITTED.inc(len(readings))
        if work.unbound:
            gateway_of = {r.meter_id: batch.gateway_id for batch in batches for r in batch.readings}
            self.unknown.record(work.unbound, gateway_of, datetime.now(UTC))
        if self.unknown.listed:
            self.unknown.forget_billed(readings, work.unbound)
        if self.on_commit is not None:
            self.on_commit(batches)
        self._outbox.notify()

    async def _announce_unknown(self, conn: AsyncConnection, readings: Sequence[Reading]) -> None:
        """A `ReadingHeld` (reason unknown_meter) for each meter seen for the first time, in the transaction."""
        events: list[tuple[str, BaseModel, bool]] = []
        for reading in readings:
            register, value = min(reading.registers.items()) if reading.registers else ("", Decimal(0))
            log.warning("readings of meter %s, which billing has no owner for, are not billed", reading.meter_id)
            notice = ReadingHeld(
                source=self._source,
                meter_id=reading.meter_id,
                reading_id=reading.reading_id,
                register_name=register,
                value=value,
                sampled_at=reading.sampled_at,
                reason=UNKNOWN_METER_REASON,
            )
            events.append((topics.reading_held(reading.meter_id), notice, False))
        await self._outbox.add_many(conn, events)


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
