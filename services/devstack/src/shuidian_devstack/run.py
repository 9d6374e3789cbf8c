"""`make run`: the whole platform with a simulated estate on one machine.

Starts (unless DATABASE_URL / MQTT_URL name real servers) an embedded PostgreSQL and MQTT broker,
then the simulator and the five services as separate processes, commissions the demo estate
through the services' own APIs, and stops everything on Ctrl-C. Data stays in ./data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shuidian_devstack import infra
from shuidian_devstack.demo import DemoEstate
from shuidian_devstack.seed import DEMO_PASSWORD, seed, seed_users
from shuidian_gateway.webui import WebSettings

log = logging.getLogger("shuidian.run")

SERVICES = {
    "collector": ("shuidian_collector", 8001),
    "billing": ("shuidian_billing", 8002),
    "control": ("shuidian_control", 8003),
    "alarm": ("shuidian_alarm", 8004),
    "insights": ("shuidian_insights", 8005),
    "gateway": ("shuidian_gateway", 8000),
}
SIMULATOR_PORT = 8090
STAFF_KEY = "dev-staff-key"


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: infra.Broker | None = None
        self.pg_dir: Path | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.data_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        self.children.append((name, process))
        log.info("started %s (pid %d), log: %s", name, process.pid, log_path)

    def stop(self) -> None:
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, process in reversed(self.children):
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                process.kill()
                process.wait()
        if self.broker:
            self.broker.stop()
        if self.pg_dir:
            infra.stop_embedded_postgres(self.pg_dir)
        log.info("stopped")

    def check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}; see data/logs/{name}.log")


async def wait_ready(urls: dict[str, str], stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        for name, url in urls.items():
            while True:
                stack.check_children()
                try:
                    if (await client.get(url)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready at {url} after {timeout}s")
                await asyncio.sleep(0.2)


async def start(stack: Stack) -> dict[str, str]:
    data = stack.data_dir
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        stack.pg_dir = data / "pg"
        server_url = infra.embedded_postgres(stack.pg_dir)
        database_url = await infra.create_database(server_url, "shuidian")
        log.info("embedded PostgreSQL running, data in %s", stack.pg_dir)
    mqtt_url = os.environ.get("MQTT_URL")
    if not mqtt_url:
        stack.broker = infra.Broker(data / "broker", port=int(os.environ.get("SHUIDIAN_BROKER_PORT", "18830")))
        mqtt_url = stack.broker.start()

    estate = DemoEstate.load_or_create(data / "estate.json")
    ports_file = data / "simulator-ports.json"
    ports_file.unlink(missing_ok=True)
    stack.spawn(
        "simulator",
        [
            "-m",
            "shuidian_simulator",
            "--estate",
            str(estate.path),
            "--control-port",
            str(SIMULATOR_PORT),
            "--ports-file",
            str(ports_file),
        ],
        {},
    )
    env = {
        "DATABASE_URL": database_url,
        "MQTT_URL": mqtt_url,
        # The demo runs consumption faster than real time: scale the physical-plausibility limits with it.
        "BILLING_MAX_PLAUSIBLE_KWH_PER_HOUR": str(60 * estate.estate.acceleration),
        "BILLING_MAX_PLAUSIBLE_M3_PER_HOUR": str(10 * estate.estate.acceleration),
    }
    for name, (module, port) in SERVICES.items():
        prefix = name.upper()
        stack.spawn(
            name,
            ["-m", module],
            {
                **env,
                f"{prefix}_HTTP_PORT": str(port),
                f"{prefix}_INSTANCE_ID": f"{name}-1",
                f"{prefix}_ENVIRONMENT": "dev",
            },
        )
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, port) in SERVICES.items()}
    await wait_ready({n: f"{u}/readyz" for n, u in urls.items()}, stack)
    deadline = time.monotonic() + 30
    while not ports_file.exists():
        stack.check_children()
        if time.monotonic() > deadline:
            raise TimeoutError("simulator did not report its ports")
        await asyncio.sleep(0.2)
    endpoints = json.loads(ports_file.read_text())
    # Seeding calls the backends directly, as the platform itself (the gateway's calls go with the staff key).
    backends = {url: name for name, url in urls.items() if name != "gateway"}
    async with httpx.AsyncClient(timeout=10.0, auth=infra.service_auth(backends, "service:devstack")) as client:
        premises = estate.premises()
        await seed(client, urls, estate.buses(endpoints), estate.accounts(), premises=premises)
        await seed_users(client, urls["gateway"], STAFF_KEY, premises)
    return urls


def web_lines(gw: str) -> list[str]:
    """Where the console and the portal are, with whom to sign in; or why they are not there."""
    if WebSettings().root() is None:
        return ["  web UI           not built (needs npm): make web, then restart"]
    return [
        f"  staff console    {gw}/console/   管理后台 — sign in as manager, cashier, maintenance, finance or admin",
        f"  tenant portal    {gw}/portal/    租户端 — sign in with a room code, e.g. A101",
        f"  password         {DEMO_PASSWORD}   (every demo sign-in)",
    ]


def banner(urls: dict[str, str], estate_rooms: int) -> str:
    gw = urls["gateway"]
    lines = [
        "",
        "Shuidian 水电 is running — 平台已启动",
        *web_lines(gw),
        f"  API gateway      {gw}/docs   (staff key: {STAFF_KEY})",
        f"  try:             curl -H 'Authorization: Bearer {STAFF_KEY}' {gw}/v1/accounts/A101",
        f"  sign in:         tenant A101 · staff manager, cashier, maintenance, finance, admin"
        f" — password {DEMO_PASSWORD}",
        f"                   curl -d grant_type=password -d username=A101 -d password={DEMO_PASSWORD} {gw}/v1/auth/token",
        *(f"  {name:<16} {url}   (internal: service token only)" for name, url in urls.items() if name != "gateway"),
        f"  simulator        http://127.0.0.1:{SIMULATOR_PORT}/docs",
        f"  demo estate      {estate_rooms} rooms, each with an electricity and a water meter",
        "  logs             data/logs/*.log",
        "Ctrl-C stops everything (data stays in ./data).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s run: %(message)s")
    for chatty in ("httpx", "embedded_postgres"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    data_dir = Path(os.environ.get("SHUIDIAN_DATA_DIR", "data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir)
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # Handled explicitly: a shell may start us with SIGINT ignored, and Ctrl-C must always work.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        urls = asyncio.run(start(stack))
        sys.stdout.write(banner(urls, DemoEstate.load_or_create(data_dir / "estate.json").rooms) + "\n")
        sys.stdout.flush()
        while not stop_requested:
            stack.check_children()
            time.sleep(0.5)
    except Exception as err:
        log.error("%s", err)
        stack.stop()
        sys.exit(1)
    stack.stop()
