"""Backups restore: billing's database, dumped with pg_dump while billing runs, restored into a fresh
PostgreSQL server (a cluster of its own, initdb + pg_ctl), serves every account's balance unchanged to a
billing started on it (docs/deploy.md, Backup and restore)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr

from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack.billing_harness import billing_on_own_database, client_of

from .conftest import free_port, wait_for_port

pytestmark = pytest.mark.integration

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(*command: str) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def fresh_server() -> Iterator[str]:
    """A PostgreSQL cluster of its own on a free port; its server URL (trust authentication on loopback)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"no PostgreSQL server binaries in {PG_BIN} (set PG_BIN)")
    # Outside pytest's private temporary directory, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="shuidian-restore-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"),
                   check=True, capture_output=True)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
    subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                                "-w", "start"), check=True, capture_output=True)  # fmt: skip
    try:
        wait_for_port(port)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


async def _run(*command: str) -> None:
    await asyncio.to_thread(subprocess.run, command, check=True)


async def test_a_dump_restored_into_a_fresh_server_has_every_balance(
    pg_server_url: str, mqtt_url: str, fresh_server: str, tmp_path: Path
) -> None:
    accounts = {f"backup-{uuid.uuid4().hex[:6]}-{i}": [Decimal(10 * i + 3), Decimal("0.07") * i] for i in range(1, 6)}
    async with billing_on_own_database(pg_server_url, mqtt_url, "backup") as app:
        source_url = app.state.runtime.settings.database_url.get_secret_value().replace("+asyncpg", "")
        async with client_of(app) as billing:
            for account, amounts in accounts.items():
                assert (await billing.put(f"/v1/accounts/{account}", json={"name": account})).status_code in (
                    200,
                    201,
                    204,
                )
                for n, amount in enumerate(amounts):
                    if amount:
                        paid = await billing.post(
                            f"/v1/accounts/{account}/topups",
                            json={"amount": str(amount), "channel": "cash", "reference": f"backup test {n}"},
                            headers={"Idempotency-Key": f"{account}-{n}"},
                        )
                        assert paid.status_code == 201, paid.text
            before = {a: (await billing.get(f"/v1/accounts/{a}")).json() for a in accounts}
        # The documented backup: a consistent snapshot of the running database (custom format).
        dump = tmp_path / "shuidian.dump"
        await _run(str(PG_BIN / "pg_dump"), "--format=custom", f"--file={dump}", source_url)

    restored = "shuidian_restored"
    await _run(str(PG_BIN / "createdb"), f"--maintenance-db={fresh_server}/postgres", restored)
    target = f"{fresh_server}/{restored}"
    await _run(str(PG_BIN / "pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={target}", str(dump))

    settings = BillingSettings(
        environment="test", database_url=SecretStr(target), mqtt_url=mqtt_url, mqtt_clean_session=True,
        instance_id=f"restored-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app), client_of(app) as billing:
        after = {a: (await billing.get(f"/v1/accounts/{a}")).json() for a in accounts}
    assert after == before
    for account, amounts in accounts.items():
        assert Decimal(after[account]["balance"]) == sum(amounts)
