"""The local store: a real SQLite file in a temporary directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shuidian_collector.store import REFUSED, LocalStore, StoreFull


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
