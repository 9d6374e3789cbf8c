"""A TCP link to one RS-485 bus behind a transparent gateway: one request/reply exchange at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F")


class BusTimeout(Exception):
    """No (acceptable) reply within the timeout."""


class BusLinkError(Exception):
    """The TCP connection to the gateway could not be made or broke."""


class FrameParser(Protocol[F]):
    def feed(self, chunk: bytes) -> list[F]: ...


class BusLink:
    """Owns the socket; callers serialise exchanges (the bus worker does)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 3.0) -> None:
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._writer.is_closing():
            return self._reader, self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self._connect_timeout
            )
        except (OSError, TimeoutError) as err:
            raise BusLinkError(f"cannot reach gateway {self.host}:{self.port}: {err}") from err
        self._reader, self._writer = reader, writer
        return reader, writer

    async def exchange(self, request: bytes, parser: FrameParser[F], accept: Callable[[F], bool], timeout: float) -> F:
        """Send `request` and return the first parsed frame that `accept` takes.

        A late reply to an earlier, timed-out request is parsed and skipped by `accept` (wrong
        address or data identifier), so it can never be taken for this request's answer.
        """
        reader, writer = await self._connect()
        try:
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise BusLinkError("gateway closed the connection")
                    for frame in parser.feed(chunk):
                        if accept(frame):
                            return frame
        except TimeoutError as err:
            raise BusTimeout(f"no reply within {timeout:.2f}s") from err
        except (OSError, BusLinkError) as err:
            await self.close()
            raise BusLinkError(str(err)) from err

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
