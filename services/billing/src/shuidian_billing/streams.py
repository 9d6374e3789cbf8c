"""Gaps in a gateway's stream of reading batches: seen, asked for again, and billed in order.

The collector numbers each gateway's batches without gaps (`ReadingBatch.epoch` / `sequence`). A
batch the broker acknowledged to the collector and then lost (a broker restarted from an old save)
shows up here as a jump in the numbers. Billing then holds the batches after the jump — without
acknowledging them — publishes a `ReplayRequest`, and bills the missing ones first when the
collector sends them again, so consumption is priced in the order it was measured (which decides
the rate under 尖峰平谷). If they do not come within `gap_wait_seconds`, the gap is recorded as lost
(the next register still carries the consumption; only its split in time is approximate) and the
held batches are billed.

One `Sequencer` per billing lane: a gateway always lands in the same lane, so a stream has one owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from shuidian_shared.messages import ReadingBatch

log = logging.getLogger(__name__)

GAPS = Counter("billing_reading_gaps_total", "gaps in gateways' batch streams", ["outcome"])

Item = tuple[ReadingBatch, "asyncio.Future[None]"]
StreamKey = tuple[str, str]  # gateway id, epoch


@dataclass
class _Stream:
    next: int  # the sequence expected next
    held: dict[int, Item] = field(default_factory=dict)
    waiting_since: float | None = None  # when the oldest open gap was seen (monotonic)
    gap: tuple[int, int] | None = None  # the open gap, as asked for again


class Sequencer:
    """Admits batches in stream order; `load` reads a stream's last billed sequence (None: never
    seen), `gap` records a gap and asks for it again, `resolved` records how it ended (the gap as
    first asked for, then what it turned out to be: all replayed, or the part never seen again)."""

    def __init__(
        self,
        *,
        wait_seconds: float,
        load: Callable[[StreamKey], Awaitable[int | None]],
        gap: Callable[[StreamKey, int, int], Awaitable[None]],
        resolved: Callable[[StreamKey, int, int, int, str], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wait = wait_seconds
        self._load = load
        self._gap = gap
        self._resolved = resolved
        self._clock = clock
        self._streams: dict[StreamKey, _Stream] = {}

    @property
    def holding(self) -> bool:
        return any(s.held for s in self._streams.values())

    async def admit(self, item: Item) -> list[Item]:
        """The batches that may be billed now, in order (this one, and held ones it unblocks)."""
        batch = item[0]
        if batch.epoch is None or batch.sequence is None:
            return [item]
        key = (batch.gateway_id, batch.epoch)
        stream = self._streams.get(key)
        if stream is None:
            last = await self._load(key)
            stream = self._streams[key] = _Stream(next=batch.sequence if last is None else last + 1)
        sequence = batch.sequence
        if sequence < stream.next:
            return [item]  # again (a redelivery or a replay of one already billed): its readings bill nothing
        if sequence > stream.next:
            if sequence in stream.held:  # the same batch again while it waits: the held copy is billed
                if not item[1].done():
                    item[1].set_result(None)
                return []
            stream.held[sequence] = item
            if stream.gap is None:
                stream.waiting_since = self._clock()
                stream.gap = (stream.next, sequence - 1)
                GAPS.labels("seen").inc()
                log.warning("gateway %s (%s): batches %d..%d missing; asked again", *key, *stream.gap)
                await self._gap(key, *stream.gap)
            return []
        return await self._advance(key, stream, [item])

    async def due(self) -> list[Item]:
        """Held batches whose gap was waited for long enough: the gap is given up, they are billed."""
        ready: list[Item] = []
        now = self._clock()
        for key, stream in self._streams.items():
            if stream.held and stream.waiting_since is not None and now - stream.waiting_since >= self._wait:
                first = min(stream.held)
                assert stream.gap is not None
                GAPS.labels("lost").inc()
                log.error("gateway %s (%s): batches %d..%d never came back; billing on", *key, stream.next, first - 1)
                await self._resolved(key, stream.gap[0], stream.next, first - 1, "lost")
                stream.next = first
                stream.gap = None
                ready += await self._advance(key, stream, [])
        return ready

    async def _advance(self, key: StreamKey, stream: _Stream, ready: list[Item]) -> list[Item]:
        if ready:
            stream.next += 1
        while stream.next in stream.held:
            ready.append(stream.held.pop(stream.next))
            stream.next += 1
        if stream.gap is not None and stream.next > stream.gap[1]:
            GAPS.labels("replayed").inc()
            log.info("gateway %s (%s): batches %d..%d came back", *key, *stream.gap)
            await self._resolved(key, stream.gap[0], *stream.gap, "replayed")
            stream.gap = None
            stream.waiting_since = None
        if not stream.held:
            stream.waiting_since = None
        elif stream.gap is None:  # another gap behind the one just closed
            first = min(stream.held)
            stream.gap = (stream.next, first - 1)
            stream.waiting_since = self._clock()
            GAPS.labels("seen").inc()
            await self._gap(key, *stream.gap)
        return ready
