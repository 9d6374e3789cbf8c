"""The compose stack under test: deploy/compose.yaml with generated secrets, production mode and the broker's ACL,
plus tests/deploy/compose.test.yaml, which publishes the backends, the simulator and PostgreSQL on loopback so
the tests can commission the estate and read the database (as an operator's tooling would). One stack serves
every test that needs it (conftest.py's `stack` fixture): it takes a minute and a half to come up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from .conftest import BACKENDS, DEPLOY, REPO, SERVICES, free_port

VERSION = os.environ.get("SHUIDIAN_VERSION", "dev")
T = TypeVar("T")


def docker(
    *args: str, check: bool = True, timeout: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        pytest.fail("no docker client (make test-deploy installs and starts a Docker engine)")
    result = subprocess.run(["docker", *args], capture_output=True, input=stdin, check=False, timeout=timeout)
    completed = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])} … failed ({result.returncode}): {completed.stderr[-2000:]}")
    return completed


def compose_command() -> list[str]:
    """`docker compose` where the plugin is installed, else Debian's docker-compose."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor docker-compose is installed")


@dataclass
class Stack:
    env: dict[str, str]
    env_file: Path
    project: str
    compose: list[str]
    gateway: str
    backends: dict[str, str]
    simulator: str
    prometheus: str
    postgres_port: int

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Only the env file configures the stack: compose prefers the caller's environment, and the test run
        # exports settings of its own (SERVICE_TOKEN_SECRET, DATABASE_URL, …). `extra_env` is what an
        # operator would export on the command line (SHUIDIAN_VERSION=<new> for an upgrade).
        result = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, check=False, timeout=timeout, cwd=REPO,
            env={**self.docker_env(), **(extra_env or {})},
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
        return result

    @staticmethod
    def docker_env() -> dict[str, str]:
        return {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST") if name in os.environ}

    def container(self, service: str) -> dict[str, Any]:
        ids = self.run("ps", "-q", service).stdout.split()
        assert ids, f"no container for {service}"
        inspected: dict[str, Any] = json.loads(docker("inspect", ids[0]).stdout)[0]
        return inspected

    async def sql(self) -> asyncpg.Connection:
        """The stack's database as its superuser (for checks an operator would run with psql)."""
        return await asyncpg.connect(
            host="127.0.0.1", port=self.postgres_port, user="postgres", password=self.env["POSTGRES_PASSWORD"],
            database="shuidian",
        )  # fmt: skip


def read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    env_file = root / ".env"
    subprocess.run([str(DEPLOY / "scripts" / "init-secrets.sh"), str(env_file), str(root / "tls")], check=True)
    ports = {name: free_port() for name in ("gateway", "mqtts", "prometheus", "postgres", *BACKENDS, "simulator")}
    with env_file.open("a") as extra:
        extra.write(
            f"SHUIDIAN_VERSION={VERSION}\nSHUIDIAN_GATEWAY_PORT={ports['gateway']}\n"
            f"SHUIDIAN_MQTTS_PORT={ports['mqtts']}\nSHUIDIAN_PROMETHEUS_PORT={ports['prometheus']}\n"
            # No protected windows (the test runs at night and at weekends too) and a fast-forwarded estate.
            "CONTROL_NIGHTS_START=\nCONTROL_NIGHTS_END=\nCONTROL_PROTECT_WEEKENDS=false\nCONTROL_PROTECT_HOLIDAYS=false\n"
            "SIMULATOR_ACCELERATION=3600\nBILLING_MAX_PLAUSIBLE_KWH_PER_HOUR=216000\n"
            "BILLING_MAX_PLAUSIBLE_M3_PER_HOUR=36000\nBILLING_FLUSH_INTERVAL_SECONDS=2\n"
            + "".join(f"TEST_{name.upper()}_PORT={port}\n" for name, port in ports.items())
        )
    project = f"shuidian-test-{uuid.uuid4().hex[:6]}"
    compose = [
        *compose_command(),
        "--env-file", str(env_file),
        "-f", str(DEPLOY / "compose.yaml"),
        "-f", str(Path(__file__).with_name("compose.test.yaml")),
        "-p", project,
        "--profile", "simulator",
    ]  # fmt: skip
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in BACKENDS}
    stack = Stack(
        read_env(env_file), env_file, project, compose, f"http://127.0.0.1:{ports['gateway']}", urls,
        f"http://127.0.0.1:{ports['simulator']}", f"http://127.0.0.1:{ports['prometheus']}", ports["postgres"],
    )  # fmt: skip
    try:
        stack.run("up", "-d", "--no-build")
        wait_healthy(stack, timeout=600)
        yield stack
    finally:
        logs = stack.run("logs", "--no-color", "--tail", "60", check=False).stdout
        (root / "compose.log").write_text(logs)
        print(logs[-20000:])
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def health(stack: Stack) -> dict[str, str]:
    """Each container's health (or state, where it has no health check), by compose service."""
    ids = stack.run("ps", "-q").stdout.split()
    inspected = json.loads(docker("inspect", *ids).stdout) if ids else []
    return {
        c["Config"]["Labels"]["com.docker.compose.service"]: c["State"]
        .get("Health", {})
        .get("Status", c["State"]["Status"])
        for c in inspected
    }


def wait_healthy(
    stack: Stack, timeout: float, services: tuple[str, ...] = (*SERVICES, "postgres", "mosquitto", "simulator")
) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = health(stack)
        if all(states.get(name) == "healthy" for name in services):
            return
        if any(states.get(name) == "exited" for name in services):
            break
        time.sleep(2)
    raise AssertionError(f"the stack did not become healthy: {states}")


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 240) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


async def get_json(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(path, params=params)
    return response.json() if response.status_code == 200 else None


def report(what: str, figures: dict[str, Any]) -> None:
    """A measured figure: printed, and added to SHUIDIAN_DEPLOY_REPORT (a JSON line), which `make test-deploy`
    prints at its end."""
    line = json.dumps({"test": what, **figures}, ensure_ascii=False)
    print(line)
    if path := os.environ.get("SHUIDIAN_DEPLOY_REPORT"):
        with open(path, "a") as out:
            out.write(line + "\n")
