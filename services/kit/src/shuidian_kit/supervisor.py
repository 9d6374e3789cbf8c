"""One named supervisor task that runs a service's background loops in a TaskGroup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

Loop = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs every registered loop; if one crashes the supervisor dies and `/readyz` turns false."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loops: dict[str, Loop] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, loop: Loop) -> None:
        if self._task is not None:
            raise RuntimeError("loops must be added before the supervisor starts")
        if name in self._loops:
            raise ValueError(f"loop {name!r} registered twice")
        self._loops[name] = loop

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, loop in self._loops.items():
                group.create_task(self._guard(name, loop), name=f"{self.name}:{name}")

    @staticmethod
    async def _guard(name: str, loop: Loop) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("background loop %s crashed; the service is no longer ready", name)
            raise

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except BaseException:  # already logged by _guard
            log.debug("supervisor %s ended with an error", self.name)
