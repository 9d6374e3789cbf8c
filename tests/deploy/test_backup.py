"""Backups restore (docs/deploy.md, Backup and restore): the running stack's database, dumped with the pg_dump of
its own PostgreSQL image (`docker compose exec postgres pg_dump`, so the client always matches the server,
whatever the host has), restored with that image's pg_restore into a fresh server of the same image, holds every
balance as it was when the dump was taken, each equal to its ledger; and this release's migration job finds
every schema at its revision there."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from decimal import Decimal

import asyncpg
import pytest

from .conftest import Estate
from .stack import VERSION, Stack, docker, report

pytestmark = pytest.mark.e2e

# Per ledger account: the cached balance and the sum of its entries (they must be equal), and how many entries.
FIGURES = (
    "SELECT coalesce(b.ledger_account, e.ledger_account) AS ledger_account, coalesce(b.balance, 0) AS balance,"
    " coalesce(e.total, 0) AS ledger, coalesce(e.entries, 0) AS entries FROM billing.balances b FULL JOIN ("
    "  SELECT ledger_account, sum(amount) AS total, count(*) AS entries FROM billing.ledger_entries"
    "  GROUP BY ledger_account) e ON e.ledger_account = b.ledger_account ORDER BY 1"
)


def _figures(rows: list[asyncpg.Record]) -> dict[str, tuple[Decimal, Decimal, int]]:
    return {r["ledger_account"]: (Decimal(r["balance"]), Decimal(r["ledger"]), int(r["entries"])) for r in rows}


def _parse(psql: str) -> dict[str, tuple[Decimal, Decimal, int]]:
    rows = [line.split("|") for line in psql.splitlines() if line]
    return {account: (Decimal(balance), Decimal(ledger), int(entries)) for account, balance, ledger, entries in rows}


@pytest.mark.timeout(1200)
async def test_a_dump_of_the_running_stack_restored_into_a_fresh_server_has_every_balance(
    stack: Stack, estate: Estate
) -> None:
    # The figures and the dump are one snapshot, taken while billing goes on pricing readings: the dump runs
    # in the snapshot a transaction exported (pg_dump --snapshot), in which the figures are read too.
    conn = await stack.sql()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            before = _figures(await conn.fetch(FIGURES))
            dumped = await asyncio.to_thread(
                subprocess.run,
                [*stack.compose, "exec", "-T", "postgres", "pg_dump", "-U", "postgres", "--format=custom",
                 f"--snapshot={snapshot}", "shuidian"],
                capture_output=True, check=False, timeout=300, env=stack.docker_env(),
            )  # fmt: skip
        server_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    assert dumped.returncode == 0, dumped.stderr.decode()
    dump = dumped.stdout
    assert dump.startswith(b"PGDMP"), "not a custom-format dump"
    households = {a: f for a, f in before.items() if a.startswith("household:")}
    assert len(households) >= 20, "the estate's accounts are in the figures"
    assert any(balance for balance, _, _ in households.values())
    assert all(balance == ledger for balance, ledger, _ in before.values()), "balances equal their ledger"

    # A fresh server: the same PostgreSQL image, a new data volume, on the stack's network (as a replacement
    # host would be); the image creates the role `shuidian` and its empty database on first start.
    network = next(iter(stack.container("postgres")["NetworkSettings"]["Networks"]))
    name = f"{stack.project}-restored-{uuid.uuid4().hex[:4]}"
    docker("run", "-d", "--name", name, "--network", network, "--network-alias", "restored-db",
           "-e", f"POSTGRES_PASSWORD={stack.env['POSTGRES_PASSWORD']}",
           "-e", f"SHUIDIAN_DB_PASSWORD={stack.env['SHUIDIAN_DB_PASSWORD']}", f"shuidian/postgres:{VERSION}")  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # initdb of a new cluster: slow on a busy host
        while docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip() != "healthy":
            assert time.monotonic() < deadline, docker("logs", name, check=False).stderr
            await asyncio.sleep(1)
        # The same PostgreSQL as the stack's (`postgres (PostgreSQL) 15.20 (Debian …)` against `15.20 (Debian …)`).
        assert f"(PostgreSQL) {server_version.split()[0]} " in docker("exec", name, "postgres", "--version").stdout

        restored = docker("exec", "-i", name, "pg_restore", "-U", "postgres", "--no-owner", "--role=shuidian",
                          "--exit-on-error", "-d", "shuidian", stdin=dump, timeout=300)  # fmt: skip
        assert restored.returncode == 0
        after = _parse(docker("exec", name, "psql", "-U", "postgres", "-d", "shuidian", "-At", "-c", FIGURES).stdout)
        assert after == before
        report("backup", {"dump_bytes": len(dump), "ledger_accounts": len(after), "server": server_version,
                          "entries": sum(entries for _, _, entries in after.values())})  # fmt: skip

        # This release's migration job, pointed at the restored database: every schema is at its revision.
        url = f"postgresql://shuidian:{stack.env['SHUIDIAN_DB_PASSWORD']}@restored-db:5432/shuidian"
        for service in ("billing", "collector"):
            job = stack.run("run", "--rm", "--no-deps", "-T", "-e", f"DATABASE_URL={url}", service, "migrate")
            assert "migrate: schema" in job.stdout, job.stdout + job.stderr
        owner = docker("exec", name, "psql", "-U", "postgres", "-d", "shuidian", "-At", "-c",
                       "SELECT tableowner FROM pg_tables WHERE schemaname = 'billing' AND tablename = 'payments'").stdout  # fmt: skip
        assert owner.strip() == "shuidian"  # the services' role owns what was restored (--role)
    finally:
        docker("rm", "-f", "--volumes", name, check=False)
