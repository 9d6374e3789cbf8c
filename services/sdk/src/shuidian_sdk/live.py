"""The tenant's live event stream (`GET /v1/me/live`, server-sent events) as an async iterator.

The stream reconnects after a dropped connection or a gateway restart, sending `Last-Event-ID` so the
gateway replays what was missed when it still can. Every connection starts with a `ready` event:
`data["resumed"]` is False when nothing could be replayed, and the app should re-read its balances and
meters then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DEFAULT_RETRY_SECONDS = 3.0


@dataclass(frozen=True)
class LiveEvent:
    """`event` is `ready`, `balance`, `meter_state` or `alarm`; `data` the JSON payload (an object)."""

    event: str
    id: str | None
    data: Any


@dataclass
class _Field:
    event: str = "message"
    id: str | None = None
    data: list[str] | None = None
    retry: int | None = None


async def parse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[LiveEvent | None, int | None]]:
    """Server-sent events from a stream's lines, per the WHATWG rules the gateway follows; yields each
    event (None for one that carried only `retry:`) with its `retry:` milliseconds, if any."""
    current = _Field()
    async for line in lines:
        if line == "":
            if current.data is not None:
                yield LiveEvent(current.event, current.id, json.loads("\n".join(current.data))), current.retry
            elif current.retry is not None:
                yield None, current.retry
            current = _Field()
            continue
        if line.startswith(":"):
            continue  # a comment: heartbeats
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data = [*(current.data or []), value]
        elif name == "event":
            current.event = value
        elif name == "id" and "\0" not in value:
            current.id = value
        elif name == "retry" and value.isdigit():
            current.retry = int(value)
