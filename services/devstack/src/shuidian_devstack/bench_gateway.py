"""Gateway throughput: authenticated tenant-scoped reads (balance, today's usage) per second.

The gateway and the real billing service (PostgreSQL behind it) run as separate uvicorn processes,
as in production; a load generator in a third process signs tenants in, then keeps CONCURRENCY
requests in flight for DURATION seconds, alternating `GET /v1/me/accounts/{id}` and
`GET /v1/me/accounts/{id}/usage/today` across TENANTS tenants. Every request carries a JWT that
the gateway verifies and is checked against the tenant's lease scope (billing's scope endpoint,
cached for a few seconds). Median of RUNS runs; CPU seconds per request of each server process.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx
import psutil
from pydantic import SecretStr

from shuidian_devstack.benchkit import emit
from shuidian_devstack.infra import free_port, service_auth

TENANTS = 20
CONCURRENCY = 64
DURATION = 8.0
RUNS = 3
TARGET = 1000.0
STAFF_KEY = "bench-staff-key-0123456789abcdef"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef-0123456789abcdef"
PASSWORD = "bench password 0123"


def _server(kind: str, options: dict[str, Any]) -> None:
    """One service in its own process (uvloop + httptools, like `python -m shuidian_<service>`)."""
    import uvicorn

    from shuidian_billing.app import create_app as billing_app
    from shuidian_billing.settings import BillingSettings
    from shuidian_gateway.app import create_app as gateway_app
    from shuidian_gateway.settings import GatewaySettings

    settings: Any
    if kind == "billing":
        settings = BillingSettings(**options)
        app = billing_app(settings)
    else:
        settings = GatewaySettings(**options)
        app = gateway_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=settings.http_port, log_level="warning", loop="uvloop", http="httptools")


def _load(url: str, requests: list[tuple[str, str]], results: Connection) -> None:
    """The load generator: CONCURRENCY keep-alive HTTP/1.1 connections for DURATION seconds cycling
    through (token, path); sends (ok, failed, seconds, CPU seconds of this process).

    A minimal client on raw asyncio streams (uvloop), so the generator costs a fraction of what the
    servers do per request: its CPU share is reported next to theirs."""
    import uvloop

    host, port = url.removeprefix("http://").split(":")
    wire = [
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + "\r\n"
        ).encode()
        for token, path in requests
    ]

    async def go() -> tuple[int, int, float, float]:
        cycle = itertools.cycle(wire)
        ok = failed = 0
        deadline = time.perf_counter() + DURATION

        async def worker() -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                try:
                    reader, writer = await asyncio.open_connection(host, int(port))
                except OSError:
                    failed += 1
                    await asyncio.sleep(0.05)
                    continue
                try:
                    while time.perf_counter() < deadline:
                        writer.write(next(cycle))
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = 0
                        for line in head.split(b"\r\n"):
                            if line[:15].lower() == b"content-length:":
                                length = int(line[15:])
                        await reader.readexactly(length)
                        if head[9:12] == b"200":
                            ok += 1
                        else:
                            failed += 1
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    failed += 1  # a broken connection: open another
                finally:
                    writer.close()

        cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return ok, failed, time.perf_counter() - began, time.process_time() - cpu

    results.send(uvloop.run(go()))


async def _measure(
    ctx: Any, url: str, requests: list[tuple[str, str]], watched: dict[str, psutil.Process]
) -> tuple[list[float], int, dict[str, float]]:
    """RUNS runs of the load generator; requests/s per run, failures, median CPU ms per request per process."""
    rates: list[float] = []
    failures = 0
    cpu: dict[str, list[float]] = {name: [] for name in [*watched, "load_generator"]}
    for _ in range(RUNS):
        before = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
        receiver, sender = ctx.Pipe(duplex=False)
        load = ctx.Process(target=_load, args=(url, requests, sender), daemon=True)
        load.start()
        if not await asyncio.to_thread(receiver.poll, DURATION * 10):
            load.kill()
            raise RuntimeError("the load generator did not report")
        ok, failed, seconds, load_cpu = receiver.recv()
        await asyncio.to_thread(load.join)
        rates.append(ok / seconds)
        failures += failed
        cpu["load_generator"].append(load_cpu / max(ok + failed, 1) * 1000)
        for name, p in watched.items():
            cpu[name].append((sum(p.cpu_times()[:2]) - before[name]) / max(ok + failed, 1) * 1000)
    return rates, failures, {name: round(statistics.median(v), 3) for name, v in cpu.items()}


async def _wait_ready(client: httpx.AsyncClient, url: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def _seed(client: httpx.AsyncClient, billing: str, gateway: str) -> list[tuple[str, str]]:
    """An estate with TENANTS households in billing; a tenant user each in the gateway, signed in."""
    staff = {"Authorization": f"Bearer {STAFF_KEY}"}

    async def put(path: str, body: dict[str, Any]) -> None:
        (await client.put(f"{billing}{path}", json=body)).raise_for_status()

    await put("/v1/estates/BE", {"name": "bench estate"})
    await put("/v1/buildings/BE-B1", {"estate_id": "BE", "name": "1号楼"})
    await put("/v1/floors/BE-B1-F1", {"building_id": "BE-B1", "level": 1})
    tokens = []
    for i in range(TENANTS):
        await put(f"/v1/rooms/BE-R{i}", {"floor_id": "BE-B1-F1", "code": f"1-{i:04d}", "area_m2": "50.00"})
        await put(f"/v1/tenants/BT-{i}", {"name": f"tenant {i}"})
        await put(
            f"/v1/leases/BL-{i}",
            {"tenant_id": f"BT-{i}", "room_id": f"BE-R{i}", "move_in": "2025-01-01", "account_id": f"BA-{i}"},
        )
        user = {"username": f"bench-tenant-{i}", "password": PASSWORD, "role": "tenant", "tenant_id": f"BT-{i}"}
        (await client.post(f"{gateway}/v1/users", json=user, headers=staff)).raise_for_status()
        form = {"grant_type": "password", "username": f"bench-tenant-{i}", "password": PASSWORD}
        signed_in = await client.post(f"{gateway}/v1/auth/token", data=form)
        signed_in.raise_for_status()
        tokens.append((signed_in.json()["access_token"], f"BA-{i}"))
    # Every tenant can read their balance and today's usage before the clock starts.
    for token, account in tokens:
        for suffix in ("", "/usage/today"):
            check = await client.get(
                f"{gateway}/v1/me/accounts/{account}{suffix}", headers={"Authorization": f"Bearer {token}"}
            )
            check.raise_for_status()
    return tokens


async def run(database_url: str, mqtt_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ports = {"billing": free_port(), "gateway": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common: dict[str, Any] = {
        "environment": "test",
        "database_url": SecretStr(database_url),
        "mqtt_url": mqtt_url,
        "mqtt_clean_session": True,
        "log_level": "WARNING",
    }
    options = {
        "billing": {**common, "instance_id": "bench-billing", "http_port": ports["billing"]},
        "gateway": {
            **common,
            "instance_id": "bench-gateway",
            "http_port": ports["gateway"],
            "staff_api_key": SecretStr(STAFF_KEY),
            "jwt_secret": SecretStr(JWT_SECRET),
            "billing_url": urls["billing"],
            "login_attempts_per_minute": 10_000,
        },
    }
    servers = {name: ctx.Process(target=_server, args=(name, options[name]), daemon=True) for name in ports}
    for process in servers.values():
        process.start()
    try:
        async with httpx.AsyncClient(timeout=30, auth=service_auth({urls["billing"]: "billing"})) as client:
            for url in urls.values():
                await _wait_ready(client, url)
            tokens = await _seed(client, urls["billing"], urls["gateway"])
        watched = {name: psutil.Process(p.pid) for name, p in servers.items() if p.pid is not None}
        mix = [
            (token, f"/v1/me/accounts/{account}{suffix}")
            for token, account in tokens
            for suffix in ("", "/usage/today")
        ]
        rates, failures, cpu = await _measure(ctx, urls["gateway"], mix, watched)
        median = statistics.median(rates)
        emit(
            "gateway_tenant_reads_per_second",
            median,
            "requests/s",
            TARGET,
            median >= TARGET and failures == 0,
            runs=RUNS,
            min=round(min(rates), 1),
            max=round(max(rates), 1),
            failed_requests=failures,
            concurrency=CONCURRENCY,
            tenants=TENANTS,
            duration_s=DURATION,
            cpus=os.cpu_count(),
            gateway_cpu_ms_per_request=cpu["gateway"],
            billing_cpu_ms_per_request=cpu["billing"],
            load_generator_cpu_ms_per_request=cpu["load_generator"],
            mix="balance and today's usage, alternating",
        )
        # The same balance reads straight from billing: the ceiling the gateway can reach in front of it.
        direct = [("", f"/v1/accounts/{account}") for _, account in tokens]  # billing has no authentication
        rates, failures, cpu = await _measure(ctx, urls["billing"], direct, watched)
        emit(
            "billing_balance_reads_per_second_direct",
            statistics.median(rates),
            "requests/s",
            TARGET,
            statistics.median(rates) >= TARGET and failures == 0,
            runs=RUNS,
            min=round(min(rates), 1),
            max=round(max(rates), 1),
            failed_requests=failures,
            concurrency=CONCURRENCY,
            billing_cpu_ms_per_request=cpu["billing"],
            load_generator_cpu_ms_per_request=cpu["load_generator"],
            note="baseline without the gateway",
        )
    finally:
        for process in servers.values():
            process.terminate()
        for process in servers.values():
            process.join(10)
