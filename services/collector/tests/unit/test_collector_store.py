"""The local store: a real SQLite file in a temporary directory."""

from __future__ import annotations

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
