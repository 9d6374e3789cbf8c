"""The local store: a real SQLite file in a temporary directory."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shuidian_collector.adapters.store import REFUSED, LocalStore, Message
from shuidian_collector.errors import StoreFull
from shuidian_shared import topics
from shuidian_shared.messages import Reading, ReadingBatch, Utility


async def test_messages_come_out_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with LocalStore(path, max_rows=100) as store:
        for i in range(5):
            await store.append(f"t/{i}", f"payload-{i}".encode(), readings=2, retain=i == 4)
        assert store.depth == 5
        first = await store.peek(2)
        assert [p.topic for p in first] == ["t/0", "t/1"]
        await store.delete([p.id for p in first])
    async with LocalStore(path, max_rows=100) as reopened:
        assert reopened.depth == 3
        rest = await reopened.peek(10)
        assert [(p.topic, p.payload, p.retain) for p in rest] == [
            ("t/2", b"payload-2", False),
            ("t/3", b"payload-3", False),
            ("t/4", b"payload-4", True),
        ]


async def test_a_full_store_refuses_new_readings_and_keeps_the_old(tmp_path: Path) -> None:
    refused_before = REFUSED._value.get()
    async with LocalStore(tmp_path / "s.sqlite3", max_rows=2) as store:
        await store.append("r/1", b"1", readings=3)
        await store.append("r/2", b"2", readings=3)
        with pytest.raises(StoreFull):
            await store.append("r/3", b"3", readings=4)
        await store.append("state/1", b"edge", retain=True)  # state edges are always kept
        assert [p.topic for p in await store.peek(10)] == ["r/1", "r/2", "state/1"]
    assert REFUSED._value.get() - refused_before == 4


async def test_periodic_messages_count_against_the_bound_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with LocalStore(path, max_rows=3) as store:
        await store.append("stats/1", b"s1", bounded=True)
        await store.append("r/1", b"1", readings=2)
        await store.append("state/1", b"edge")  # unbounded
        await store.append("stats/2", b"s2", bounded=True)
        with pytest.raises(StoreFull, match="1 other message"):
            await store.append("stats/3", b"s3", bounded=True)
        with pytest.raises(StoreFull):
            await store.append("r/2", b"2", readings=1)
        await store.append("state/2", b"edge")
    async with LocalStore(path, max_rows=3) as reopened:  # the bound is recounted from the file
        with pytest.raises(StoreFull):
            await reopened.append("stats/4", b"s4", bounded=True)
        rows = await reopened.peek(10)
        assert [p.topic for p in rows] == ["stats/1", "r/1", "state/1", "stats/2", "state/2"]
        await reopened.delete([rows[0].id])  # a periodic row acknowledged: room for one more
        await reopened.append("stats/4", b"s4", bounded=True)


async def test_a_store_file_from_before_periodic_messages_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE pending (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, "
            "retain INTEGER NOT NULL DEFAULT 0, readings INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute("INSERT INTO pending (topic, payload, readings) VALUES ('r/old', x'01', 5)")
    async with LocalStore(path, max_rows=2) as store:
        await store.append("stats/1", b"s", bounded=True)
        with pytest.raises(StoreFull):
            await store.append("stats/2", b"s", bounded=True)
        assert [p.topic for p in await store.peek(10)] == ["r/old", "stats/1"]


def batch(gateway: str) -> ReadingBatch:
    reading = Reading.create(
        "E-1", Utility.ELECTRICITY, datetime(2026, 12, 1, tzinfo=UTC), registers={"energy_active_import_total": "1"}
    )
    return ReadingBatch(source="collector-t", gateway_id=gateway, readings=(reading,))


def numbered(payload: bytes) -> tuple[str, str | None, int | None]:
    decoded = ReadingBatch.model_validate_json(payload)
    return decoded.gateway_id, decoded.epoch, decoded.sequence


async def test_each_gateways_batches_are_numbered_without_gaps_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with LocalStore(path, max_rows=3) as store:
        epoch = store.epoch
        for gateway in ("G1", "G2", "G1"):
            await store.append_many([Message(topics.readings(gateway), b"", readings=1, batch=batch(gateway))])
        with pytest.raises(StoreFull):  # refused: numbers nothing, so no gap is made
            await store.append_many([Message(topics.readings("G1"), b"", readings=1, batch=batch("G1"))])
        rows = await store.peek(10)
        await store.delete([r.id for r in rows])
    assert [numbered(r.payload) for r in rows] == [("G1", epoch, 1), ("G2", epoch, 1), ("G1", epoch, 2)]
    async with LocalStore(path, max_rows=3) as reopened:
        assert reopened.epoch == epoch
        await reopened.append_many([Message(topics.readings("G1"), b"", readings=1, batch=batch("G1"))])
        [row] = await reopened.peek(10)
    assert numbered(row.payload) == ("G1", epoch, 3)
    async with LocalStore(tmp_path / "other.sqlite3", max_rows=3) as other:
        assert other.epoch != epoch  # another store file is another stream


async def test_sent_batches_are_kept_for_a_replay_and_come_out_again_before_newer_ones(tmp_path: Path) -> None:
    async with LocalStore(tmp_path / "s.sqlite3", max_rows=10, replay_seconds=3600) as store:
        for _ in range(3):
            await store.append_many([Message(topics.readings("G1"), b"", readings=1, batch=batch("G1"))])
        await store.append("state/1", b"edge", retain=True)
        sent = await store.peek(10)
        await store.delete([r.id for r in sent])
        assert (store.depth, await store.peek(10)) == (0, [])
        await store.append_many([Message(topics.readings("G1"), b"", readings=1, batch=batch("G1"))])
        assert await store.replay("G1", "another-epoch", 1, 3) == 0
        assert await store.replay("G1", store.epoch, 2, 3) == 2
        assert store.depth == 3
        again = await store.peek(10)
        assert [numbered(r.payload)[2] for r in again] == [2, 3, 4]  # the replayed first, in their order
        await store.delete([r.id for r in again])
        assert await store.prune() == 0  # within the window
        store.replay_seconds = 0
        assert await store.prune() == 4  # every sent batch; the state edge was deleted when sent
        assert await store.replay("G1", store.epoch, 1, 4) == 0
