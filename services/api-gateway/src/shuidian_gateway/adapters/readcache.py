"""Hot tenant reads served from memory, each with a documented staleness bound.

- `ReadCache`: values fetched from a backend and kept for a fixed number of seconds (bounded in
  size). Concurrent misses of one key share a single backend call. `invalidate` drops a key, and a
  fetch that was already under way when it was invalidated is not kept.
- `BalanceReadModel`: account balances as billing serves them, kept at most `ttl` seconds and
  dropped as soon as a `BalanceEvent` with a higher sequence arrives (billing publishes one when an
  account's level changes), so the next read fetches the new figures. A read of a cold or expired
  account falls back to billing and seeds the model.

Caches are per gateway process and keyed by account: the caller checks that the tenant owns the
account *before* asking, so a cache can never hand one tenant another tenant's data.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from shuidian_gateway.domain.policy import Principal
from shuidian_shared.messages import BalanceEvent

MAX_ENTRIES = 50_000
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """`ttl`-second memory of backend reads; concurrent misses of a key share one fetch."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._pending: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> V | None:
        """The cached value if it is still fresh, else None (no backend call)."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._entries[key]
            return None
        return hit[1]

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The fresh cached value, or `fetch()`'s (shared with concurrent callers, kept for `ttl` s)."""
        value = self.peek(key)
        if value is not None:
            return value
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, fetch))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    def invalidate(self, key: K) -> None:
        """Forget `key`: the next read fetches it again, and a fetch under way now is not kept."""
        self._entries.pop(key, None)
        self._pending.pop(key, None)

    async def _load(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        value = await fetch()
        if self._ttl > 0 and self._pending.get(key) is asyncio.current_task():
            self._entries[key] = (self._clock() + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)  # the oldest entry goes first
        return value

    def _settle(self, key: K, done: asyncio.Task[V]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody waited for is not logged as lost


@dataclass(frozen=True)
class CachedBalance:
    sequence: int
    body: bytes  # the JSON document served to the tenant


class BalanceReadModel:
    """Balances of household accounts: at most `ttl` s old, refreshed at once on a newer BalanceEvent."""

    def __init__(self, ttl: float, fetch: Callable[[str], Awaitable[CachedBalance]]) -> None:
        self._cache: ReadCache[str, CachedBalance] = ReadCache(ttl)
        self._fetch = fetch

    async def balance(self, account_id: str) -> CachedBalance:
        return await self._cache.get(account_id, lambda: self._fetch(account_id))

    def cached(self, account_id: str) -> CachedBalance | None:
        return self._cache.peek(account_id)

    def on_event(self, event: BalanceEvent) -> None:
        """A newer sequence than the one held drops the account (the event's `balance` is one purse's
        available credit, not the account's figures, so it is not patched in); older ones are ignored."""
        hit = self._cache.peek(event.account_id)
        if hit is None or hit.sequence < event.sequence:
            self._cache.invalidate(event.account_id)


class VerifiedTokens:
    """Access tokens whose signature and claims were verified, until they expire (bounded, least
    recently used out first). A token is a signed, immutable statement, so verifying it again would
    give the same principal; its expiry is still checked on every use."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._tokens: OrderedDict[str, tuple[datetime, Principal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token: str, now: datetime) -> Principal | None:
        hit = self._tokens.get(token)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._tokens[token]
            return None
        self._tokens.move_to_end(token)
        return hit[1]

    def put(self, token: str, principal: Principal, expires_at: datetime) -> None:
        self._tokens[token] = (expires_at, principal)
        self._tokens.move_to_end(token)
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)
