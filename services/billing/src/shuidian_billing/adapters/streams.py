"""Gaps in a gateway's stream of reading batches: seen, asked for again, and billed in order.

The collector numbers each gateway's batches without gaps (`ReadingBatch.epoch` / `sequence`). A
batch the broker acknowledged to the collector and then lost (a broker restarted from an old save)
shows up here as a jump in the numbers. Billing then holds the batches after the jump — without
acknowledging them — and, if the gap is still open after `request_after` seconds, records it and
publishes a `ReplayRequest`; the missing batches are billed first when the collector sends them
again, so consumption is priced in the order it was measured (which decides the rate under
尖峰平谷). If they do not come within `wait_seconds`, the gap is recorded as lost (the next register
still carries the consumption; only its split in time is approximate) and the held batches are billed.

Replicas of one shard share its batches through a shared subscription, so a jump is often only
batches another replica billed: where the stream stands is read again from the database (the
position each replica writes in its billing transaction) before a gap is declared, and while one
is open.

One `Sequencer` per billing lane: a gateway always lands in the same lane of a replica.
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

GAPS = Counter("billing_reading_gaps_total", "gaps in gateways' batch streams, asked for again", ["outcome"])

Item = tuple[ReadingBatch, "asyncio.Future[None]"]
StreamKey = tuple[str, str]  # gateway id, epoch
RECHECK_SECONDS = 1.0  # how often a stream with held batches looks at where the database says it stands


@dataclass
class _Stream:
    next: int  # the sequence expected next
    held: dict[int, Item] = field(default_factory=dict)
    since: float = 0.0  # when the open gap was seen (monotonic)
    asked: tuple[int, int] | None = None  # the gap asked for again, while it is open
    checked: float = 0.0


class Sequencer:
    """Admits batches in stream order. Ports: `load` reads a stream's last billed sequence (None:
    never seen), `gap` records a gap and asks for it again, `resolved` records how it ended (the
    gap as first asked for, then what it turned out to be: replayed, or the part never seen)."""

    def __init__(
        self,
        *,
        wait_seconds: float,
        load: Callable[[StreamKey], Awaitable[int | None]],
        gap: Callable[[StreamKey, int, int], Awaitable[None]],
        resolved: Callable[[StreamKey, int, int, int, str], Awaitable[None]],
        request_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wait = wait_seconds
        self._request_after = min(request_after, wait_seconds)
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
        key, sequence = (batch.gateway_id, batch.epoch), batch.sequence
        stream = self._streams.get(key)
        if stream is None:
            last = await self._load(key)
            stream = self._streams[key] = _Stream(next=sequence if last is None else last + 1)
        if sequence > stream.next and not stream.held:
            await self._recheck(key, stream)  # another replica may have billed the batches between
        if sequence < stream.next:
            return [item]  # again (a redelivery or a replay of one already billed): its readings bill nothing
        if sequence > stream.next:
            if sequence in stream.held:  # the same batch again while it waits: the held copy is billed
                if not item[1].done():
                    item[1].set_result(None)
                return []
            if not stream.held:
                stream.since = self._clock()
            stream.held[sequence] = item
            return []
        stream.next += 1
        return [item, *await self._release(key, stream)]

    async def due(self) -> list[Item]:
        """Batches a stream can bill now that time has passed: the database says the gap was billed
        by another replica, or the gap was waited for long enough. Asks for gaps that stay open."""
        ready: list[Item] = []
        now = self._clock()
        for key, stream in self._streams.items():
            if not stream.held:
                continue
            if now - stream.checked >= RECHECK_SECONDS:
                ready += await self._recheck(key, stream)
                if not stream.held:
                    continue
            first = min(stream.held)
            if stream.asked is None and now - stream.since >= self._request_after:
                stream.asked = (stream.next, first - 1)
                GAPS.labels("asked").inc()
                log.warning("gateway %s (%s): batches %d..%d missing; asked again", *key, stream.next, first - 1)
                await self._gap(key, stream.next, first - 1)
            if now - stream.since >= self._wait:
                GAPS.labels("lost").inc()
                log.error("gateway %s (%s): batches %d..%d never came back; billing on", *key, stream.next, first - 1)
                await self._resolved(
                    key, stream.asked[0] if stream.asked else stream.next, stream.next, first - 1, "lost"
                )
                stream.asked = None
                stream.next = first
                ready += await self._release(key, stream)
        return ready

    async def _recheck(self, key: StreamKey, stream: _Stream) -> list[Item]:
        """Move up to where the database says the stream stands; held batches at or below it pass."""
        stream.checked = self._clock()
        last = await self._load(key)
        if last is None or last + 1 <= stream.next:
            return []
        stream.next = last + 1
        passed = [stream.held.pop(s) for s in sorted(stream.held) if s < stream.next]
        return passed + await self._release(key, stream)

    async def _release(self, key: StreamKey, stream: _Stream) -> list[Item]:
        ready: list[Item] = []
        while stream.next in stream.held:
            ready.append(stream.held.pop(stream.next))
            stream.next += 1
        if stream.asked is not None and stream.next > stream.asked[1]:
            GAPS.labels("replayed").inc()
            log.info("gateway %s (%s): batches %d..%d came back", *key, *stream.asked)
            await self._resolved(key, stream.asked[0], *stream.asked, "replayed")
            stream.asked = None
        if stream.held and stream.asked is None:
            stream.since = self._clock()  # the next gap, if any, is timed from now
        return ready
