"""A rolling upgrade of the running compose stack under load (docs/deploy.md, Upgrades): while the simulated estate
is read and billed and a cash desk tops accounts up through the gateway, deploy/scripts/upgrade.sh runs the new
release's migration job and replaces the six services one by one. Afterwards: every service is healthy and says
it runs the new version, every top-up sent is in the ledger exactly once, every balance equals its ledger, every
reading batch the collector stored was billed (its numbered stream has no hole), and the gateway answered 5xx
only while the service a request needed was being replaced (plus the drain window)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from shuidian_devstack.seed import DEMO_PASSWORD

from .conftest import DEPLOY, SERVICES, Estate
from .stack import VERSION, Stack, docker, eventually, report

pytestmark = pytest.mark.e2e

NEW = f"{VERSION}-next"
# After a replaced service is healthy again, the gateway may still hold a connection to the old container for
# a moment (its pool notices on first use): 5xx are accepted this long after, and never otherwise.
DRAIN_WINDOW_S = 5.0
# What a request through the gateway needs, by the service answering it (the gateway itself: every request).
PROBES = {
    "billing": "/v1/accounts/A102",  # the estate's second room (the first, A101, is the household test's)
    "collector": "/v1/meters",
    "control": "/v1/commands",
    "alarm": "/v1/alarms",
}


def _head_of_billing_migrations() -> str:
    """The newest billing revision in the running release's image (the new one's probe migration follows it)."""
    script = (
        "import pathlib, shuidian_billing; from alembic.script import ScriptDirectory; "
        "print(*ScriptDirectory(str(pathlib.Path(shuidian_billing.__file__).parent / 'migrations')).get_heads())"
    )
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", f"shuidian/billing:{VERSION}",
                 "-c", script).stdout.split()  # fmt: skip
    assert len(out) == 1, out
    return out[0]


def build_next_release(tmp: Path, probe_revision: str) -> None:
    """The new release: each service's image rebuilt with a new tag and version label; billing's also carries
    an expand-only migration (a nullable column), so the migration job has something to do."""
    head = _head_of_billing_migrations()
    context = tmp / "next"
    context.mkdir()
    (context / f"{probe_revision}.py").write_text(
        textwrap.dedent(f'''
        """Deploy test: the next release adds a nullable column (expand only)."""
        from alembic import op

        revision = "{probe_revision}"
        down_revision = "{head}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.execute("ALTER TABLE billing.accounts ADD COLUMN upgrade_probe text")
        ''')
    )
    for service in SERVICES:
        lines = [
            f"FROM shuidian/{service}:{VERSION}",
            f'LABEL org.opencontainers.image.version="{NEW}"',
            f"ENV SHUIDIAN_VERSION={NEW}",
        ]
        if service == "billing":
            lines.append(f"COPY {probe_revision}.py /opt/app/site-packages/shuidian_billing/migrations/versions/")
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        docker("build", "--quiet", "--network", "host", "-t", f"shuidian/{service}:{NEW}", str(context), timeout=300)


@dataclass
class Load:
    """Top-ups at a cash desk through the gateway (each retried with its idempotency key until accepted) and
    staff reads that touch every backend; every answer is kept with its time."""

    gateway: str
    token: str
    run: str
    accounts: list[str]
    sent: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # reference → account, amount
    answers: list[tuple[float, str, int | None]] = field(default_factory=list)  # time, what, status (None: refused)
    accepted: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def topup(self, client: httpx.AsyncClient, n: int) -> None:
        account = self.accounts[n % len(self.accounts)]
        amount = Decimal(random.randint(100, 999)) / 100
        reference = f"upgrade-{self.run}-{n}"
        self.sent[reference] = (account, amount)
        key = f"deploy-upgrade-{self.run}-{n}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                response = await client.post(
                    f"/v1/accounts/{account}/topups",
                    json={"amount": str(amount), "channel": "cash", "reference": reference},
                    headers={"Idempotency-Key": key},
                )
                self.answers.append((time.time(), "billing", response.status_code))
                if response.status_code in (200, 201):
                    self.accepted.add(reference)
                    return
                # Retried: a 5xx, or the gateway still holding the same key's first attempt. Any other 4xx is a
                # real refusal, and the test is wrong.
                assert response.status_code >= 500 or "still being processed" in response.text, response.text
            except httpx.TransportError:
                self.answers.append((time.time(), "billing", None))
            await asyncio.sleep(0.5)  # the cashier presses "retry": the same key, never a second payment
        raise AssertionError(f"top-up {reference} was never accepted")

    async def cash_desk(self, cashiers: int = 3) -> None:
        """A few cashiers, each paying in one top-up after the other: the load stays bounded however slow the
        gateway gets while services are replaced."""
        counter = iter(range(1_000_000))

        async def cashier(client: httpx.AsyncClient) -> None:
            while not self.stop.is_set():
                await self.topup(client, next(counter))
                await asyncio.sleep(0.3)

        async with httpx.AsyncClient(base_url=self.gateway, timeout=60, headers=self._auth()) as client:
            await asyncio.gather(*(cashier(client) for _ in range(cashiers)))

    async def staff(self) -> None:
        async with httpx.AsyncClient(base_url=self.gateway, timeout=60, headers=self._auth()) as client:
            while not self.stop.is_set():
                for service, path in PROBES.items():
                    try:
                        status: int | None = (await client.get(path)).status_code
                    except httpx.TransportError:
                        status = None
                    self.answers.append((time.time(), service, status))
                await asyncio.sleep(0.3)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def _sign_in(gateway: str) -> str:
    async with httpx.AsyncClient(base_url=gateway, timeout=20) as client:
        signed = await client.post(
            "/v1/auth/token", data={"grant_type": "password", "username": "admin", "password": DEMO_PASSWORD}
        )
        assert signed.status_code == 200, signed.text
        token: str = signed.json()["access_token"]
        return token


def _collector_streams(stack: Stack) -> dict[tuple[str, str], int]:
    """(gateway, epoch) → the last reading batch the collector numbered in its local store."""
    script = (
        "import glob, json, sqlite3; db = sqlite3.connect(glob.glob('/data/**/store-*.sqlite3', recursive=True)[0]); "
        "epoch = db.execute(\"SELECT value FROM meta WHERE key = 'epoch'\").fetchone()[0]; "
        "print(json.dumps([[g, epoch, s] for g, s in db.execute('SELECT gateway_id, last_sequence FROM streams')]))"
    )
    rows = json.loads(stack.run("exec", "-T", "collector", "python3", "-c", script).stdout)
    return {(gateway, epoch): sequence for gateway, epoch, sequence in rows}


def _windows(log: str) -> dict[str, tuple[float, float]]:
    """From upgrade.sh's output: each service's replacement, from its old container's stop to the new one's health."""
    started: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}
    for line in log.splitlines():
        words = line.split()
        if line.startswith("upgrade: ") and words[2] in ("replacing", "healthy"):
            service, at = words[1], float(words[-1])
            if words[2] == "replacing":
                started[service] = at
            else:
                windows[service] = (started[service], at)
    return windows


@pytest.mark.timeout(1500)  # the stack may come up for this test first: minutes on a busy host
async def test_a_rolling_upgrade_under_load_loses_no_reading_and_no_topup(
    stack: Stack, estate: Estate, tmp_path: Path
) -> None:
    probe = f"deploy_probe_{uuid.uuid4().hex[:8]}"
    build_next_release(tmp_path, probe)
    streams_before = _collector_streams(stack)
    assert streams_before, "the collector has numbered no reading batch yet"

    accounts = [account for account in estate.accounts if account != "A101"][:10]
    load = Load(stack.gateway, await _sign_in(stack.gateway), uuid.uuid4().hex[:8], accounts)
    driving = asyncio.gather(load.cash_desk(), load.staff())
    await asyncio.sleep(5)  # the load runs before the upgrade starts
    started = time.time()
    compose = " ".join(stack.compose)
    upgrade = await asyncio.to_thread(
        subprocess.run, [str(DEPLOY / "scripts" / "upgrade.sh"), NEW], capture_output=True, text=True, timeout=900,
        env={**stack.docker_env(), "COMPOSE": compose, "UPGRADE_HEALTH_TIMEOUT": "300"},
    )  # fmt: skip
    upgraded = time.time()
    await asyncio.sleep(5)  # and after it ends
    load.stop.set()
    await driving
    print(upgrade.stdout)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr

    # Every service healthy, on the new image, and saying so on /healthz.
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            container = stack.container(service)
            assert container["Config"]["Labels"]["org.opencontainers.image.version"] == NEW, service
            url = stack.gateway if service == "gateway" else stack.backends[service]
            assert (await client.get(f"{url}/readyz")).status_code == 200, service
            assert (await client.get(f"{url}/healthz")).json() == {"status": "ok", "version": NEW}, service

    # The migration job ran before any service was replaced: billing's schema is at the new release's revision.
    conn = await stack.sql()
    try:
        assert await conn.fetchval("SELECT version_num FROM billing.alembic_version") == probe
        assert await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'billing' "
            "AND table_name = 'accounts' AND column_name = 'upgrade_probe'"
        )

        # Every top-up sent is in the ledger once: one payment per reference, the amount sent, a balanced
        # transaction that credits the household by that amount.
        assert load.accepted == set(load.sent)
        rows = await conn.fetch(
            "SELECT p.reference, p.account_id, p.amount, sum(e.amount) AS net,"
            " sum(e.amount) FILTER (WHERE e.ledger_account LIKE 'household:' || p.account_id || '%') AS credited"
            " FROM billing.payments p JOIN billing.ledger_entries e USING (txn_id)"
            " WHERE p.reference LIKE $1 GROUP BY p.payment_id",
            f"upgrade-{load.run}-%",
        )
        paid = [(r["reference"], r["account_id"], r["amount"]) for r in rows]
        assert len(paid) == len({reference for reference, _, _ in paid}), "a top-up was posted twice"
        assert {reference: (account, amount) for reference, account, amount in paid} == load.sent
        assert all(r["net"] == 0 and r["credited"] == r["amount"] for r in rows), [dict(r) for r in rows]
        mismatched = await conn.fetch(
            "SELECT coalesce(b.ledger_account, e.ledger_account) AS ledger_account FROM billing.balances b"
            " FULL JOIN (SELECT ledger_account, sum(amount) AS total FROM billing.ledger_entries"
            " GROUP BY ledger_account) e ON e.ledger_account = b.ledger_account"
            " WHERE coalesce(b.balance, 0) <> coalesce(e.total, 0)"
        )
        assert mismatched == [], "balances that are not the sum of their ledger"

        # No reading lost: the collector's store kept its stream across its own replacement (same epoch), and
        # billing billed every batch it numbered up to now, without a hole.
        streams_after = _collector_streams(stack)
        assert set(streams_before) <= set(streams_after), "the collector's store did not survive the upgrade"
        assert all(streams_after[s] > streams_before[s] for s in streams_before), "no batch since the upgrade"

        async def billed_up_to_the_collector() -> bool:
            billed = {
                (r["gateway_id"], r["epoch"]): r["last_sequence"]
                for r in await conn.fetch("SELECT gateway_id, epoch, last_sequence FROM billing.reading_streams")
            }
            return all(billed.get(stream, 0) >= last for stream, last in streams_after.items())

        await eventually(billed_up_to_the_collector, "billing to bill every batch the collector stored", 120)
        holes = await conn.fetch("SELECT * FROM billing.reading_gaps WHERE state <> 'replayed'")
        assert holes == [], [dict(h) for h in holes]

        async def every_meter_billed_since() -> bool:
            stale = await conn.fetch(
                "SELECT meter_id FROM billing.watermarks GROUP BY meter_id HAVING max(sampled_at) < to_timestamp($1)",
                upgraded,
            )
            return not stale

        await eventually(every_meter_billed_since, "every meter to be billed after the upgrade", 60)
    finally:
        await conn.close()

    # 5xx only while the service the request needed (or the gateway) was being replaced, plus the drain window.
    windows = _windows(upgrade.stdout)
    assert set(windows) == set(SERVICES), upgrade.stdout

    def excused(at: float, service: str) -> bool:
        return any(
            start <= at <= end + DRAIN_WINDOW_S
            for name, (start, end) in windows.items()
            if name in (service, "gateway")
        )

    errors = [(at, service, status) for at, service, status in load.answers if status is None or status >= 500]
    unexcused = [(at - started, service, status) for at, service, status in errors if not excused(at, service)]
    figures = {
        "upgrade_s": round(upgraded - started, 1),
        "replaced_s": {name: round(end - start, 1) for name, (start, end) in windows.items()},
        "topups": len(load.sent),
        "requests": len(load.answers),
        "5xx": sum(1 for _, _, status in errors if status is not None),
        "refused": sum(1 for _, _, status in errors if status is None),
    }
    report("rolling upgrade", figures)
    assert unexcused == [], unexcused
    # The load really ran through the upgrade.
    assert len(load.sent) > 20
    assert len(load.answers) > 100
