"""The sequencer of a gateway's batch stream: whatever the arrival order, duplicates and losses, each
batch is let through once, fresh ones in stream order; a gap is asked for once and ends replayed or
lost, never silently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_billing.adapters.streams import Item, Sequencer, StreamKey
from shuidian_shared.messages import ReadingBatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Journal:
    """The sequencer's ports, recording what it did."""

    def __init__(self, known: dict[StreamKey, int] | None = None) -> None:
        self.known = known or {}
        self.gaps: list[tuple[int, int]] = []
        self.outcomes: list[tuple[int, int, int, str]] = []

    async def load(self, key: StreamKey) -> int | None:
        return self.known.get(key)

    async def gap(self, key: StreamKey, first: int, last: int) -> None:
        self.gaps.append((first, last))

    async def resolved(self, key: StreamKey, asked: int, first: int, last: int, outcome: str) -> None:
        self.outcomes.append((asked, first, last, outcome))


def item(sequence: int | None, epoch: str | None = "ep1") -> Item:
    batch = ReadingBatch(source="t", gateway_id="gw", readings=(), epoch=epoch, sequence=sequence)
    return batch, asyncio.get_running_loop().create_future()


def sequencer(journal: Journal, clock: Clock, wait: float = 30.0) -> Sequencer:
    return Sequencer(wait_seconds=wait, load=journal.load, gap=journal.gap, resolved=journal.resolved, clock=clock)


def holding(seq: Sequencer) -> bool:
    return seq.holding


def order(items: list[Item]) -> list[int | None]:
    return [batch.sequence for batch, _ in items]


async def test_a_gap_holds_later_batches_until_it_is_replayed() -> None:
    journal, clock = Journal(), Clock()
    seq = sequencer(journal, clock)
    assert order(await seq.admit(item(1))) == [1]
    assert order(await seq.admit(item(4))) == []
    assert order(await seq.admit(item(5))) == []
    assert order(await seq.due()) == []
    assert journal.gaps == []  # not asked at once: it may be in flight on another replica
    clock.now = 2
    assert order(await seq.due()) == []
    clock.now = 3
    assert order(await seq.due()) == []
    assert journal.gaps == [(2, 3)]  # asked once
    assert holding(seq)
    assert order(await seq.admit(item(3))) == []  # part of the gap: still waiting for 2
    assert order(await seq.admit(item(2))) == [2, 3, 4, 5]
    assert journal.outcomes == [(2, 2, 3, "replayed")]
    assert not holding(seq)
    assert order(await seq.admit(item(2))) == [2]  # a late duplicate passes; its readings bill nothing


async def test_a_gap_that_never_comes_back_is_recorded_lost_and_billing_goes_on() -> None:
    journal, clock = Journal(known={("gw", "ep1"): 10}), Clock()
    seq = sequencer(journal, clock, wait=30)
    assert order(await seq.admit(item(13))) == []  # the last billed before a restart was 10
    clock.now = 2
    await seq.due()
    assert journal.gaps == [(11, 12)]
    clock.now = 29
    assert order(await seq.due()) == []
    clock.now = 30
    assert order(await seq.due()) == [13]
    assert journal.outcomes == [(11, 11, 12, "lost")]
    assert order(await seq.admit(item(14))) == [14]


async def test_batches_another_replica_billed_are_no_gap() -> None:
    """Replicas of a shard share its batches: a jump is first checked against where the database
    says the stream stands, and again while batches are held."""
    key = ("gw", "ep1")
    journal, clock = Journal(known={key: 1}), Clock()
    seq = sequencer(journal, clock)
    assert order(await seq.admit(item(2))) == [2]
    journal.known[key] = 3  # another replica committed 3 meanwhile
    assert order(await seq.admit(item(4))) == [4]
    assert order(await seq.admit(item(7))) == []  # 5 and 6 are still in flight on the other replica
    journal.known[key] = 6
    clock.now = 1.5
    assert order(await seq.due()) == [7]
    clock.now = 60
    assert order(await seq.due()) == []
    assert (journal.gaps, journal.outcomes) == ([], [])


async def test_batches_without_a_stream_and_new_streams_pass_at_once() -> None:
    journal, clock = Journal(), Clock()
    seq = sequencer(journal, clock)
    assert order(await seq.admit(item(None, epoch=None))) == [None]
    assert order(await seq.admit(item(500))) == [500]  # a stream never seen starts where it is
    assert order(await seq.admit(item(1, epoch="ep2"))) == [1]  # a new store (epoch) is a new stream
    assert journal.gaps == []


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 30),
    data=st.data(),
)
def test_any_arrival_order_lets_each_batch_through_once_and_fresh_ones_in_order(
    total: int, data: st.DataObject
) -> None:
    """Arrivals: every batch at least once (the broker and replays may repeat them), shuffled, with
    time passing in between; fresh batches come out in stream order, each exactly once, unless their
    gap was given up (recorded as lost)."""
    arrivals = data.draw(st.permutations([s for s in range(1, total + 1) for _ in (0, 1)]))
    arrivals = [1, *arrivals]  # the stream starts at 1
    ticks = data.draw(st.lists(st.floats(0, 20), min_size=len(arrivals), max_size=len(arrivals)))

    async def run() -> tuple[list[int], list[int], Journal]:
        journal, clock = Journal(), Clock()
        seq = sequencer(journal, clock, wait=30)
        admitted: list[Item] = []
        out: list[Item] = []
        for sequence, tick in zip(arrivals, ticks, strict=True):
            clock.now += tick
            admitted.append(item(sequence))
            out += await seq.admit(admitted[-1])
            out += await seq.due()
        clock.now += 31
        out += await seq.due()
        # A copy of a batch that arrives while the batch is held is settled at once (the held one is billed).
        settled = [batch.sequence or 0 for batch, done in admitted if done.done()]
        return [batch.sequence or 0 for batch, _ in out], settled, journal

    emitted, settled, journal = asyncio.run(run())
    assert sorted(emitted + settled) == sorted(arrivals)  # each arrival billed or settled once: nothing lost
    assert set(emitted) == set(arrivals)
    fresh: list[int] = []
    for sequence in emitted:
        if not fresh or sequence > fresh[-1]:
            fresh.append(sequence)
    # Every batch billed fresh in stream order, but those of a gap given up after the wait (they come
    # late, after later ones, and bill nothing then: the next register carried their consumption).
    lost = {s for _, first, last, outcome in journal.outcomes if outcome == "lost" for s in range(first, last + 1)}
    assert fresh == sorted(set(range(1, total + 1)) - lost)
    # Every gap asked for ended one way or the other.
    assert sorted(first for first, _ in journal.gaps) == sorted(asked for asked, _, _, _ in journal.outcomes)


def test_the_same_batch_model_carries_stream_positions() -> None:
    batch = ReadingBatch(source="t", gateway_id="gw", readings=(), epoch="ep1", sequence=7)
    again = ReadingBatch.model_validate_json(batch.model_dump_json())
    assert (again.epoch, again.sequence) == ("ep1", 7)
    assert again.occurred_at <= datetime.now(UTC)
