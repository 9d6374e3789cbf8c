"""Upgrades from the previous release (deploy/previous-release: the commit it was built from): its schemas,
migrated by its own migration scripts, migrate to this release's; an old replica restarting after that runs on
the newer schema; and migrations new since then only expand (docs/deploy.md, Upgrades)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from shuidian_devstack import infra
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade

from .conftest import DEPLOY, REPO

pytestmark = pytest.mark.integration

SCHEMAS = {
    "collector": "collector",
    "billing": "billing",
    "control": "control",
    "alarm": "alarm",
    "insights": "insights",
    "api-gateway": "gateway",
}
# Statements that break the release before: allowed only on a line that says which release stopped using it.
DESTRUCTIVE = re.compile(
    r"\b(DROP\s+(COLUMN|TABLE|INDEX)|RENAME\s+(COLUMN|TO)|ALTER\s+COLUMN\s+\S+\s+(TYPE|SET\s+NOT\s+NULL))\b", re.I
)


def _migrations(tree: Path, folder: str) -> Path:
    package = "gateway" if folder == "api-gateway" else folder
    return tree / "services" / folder / "src" / f"shuidian_{package}" / "migrations"


@pytest.fixture(scope="module")
def previous_release() -> Iterator[Path]:
    commit = (DEPLOY / "previous-release").read_text().strip()
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, check=False).returncode != 0:
        pytest.fail(f"the previous release {commit} is not in this clone's history")
    tree = Path(tempfile.mkdtemp(prefix="shuidian-previous-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=REPO, check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
        shutil.rmtree(tree.parent, ignore_errors=True)


async def test_the_previous_releases_schemas_migrate_and_its_replicas_still_start(
    previous_release: Path, pg_server_url: str
) -> None:
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    engine = create_engine(await infra.create_database(pg_server_url, name, exist_ok=False))
    try:
        for folder, schema in SCHEMAS.items():
            old = _migrations(previous_release, folder)
            released = old.is_dir()  # a service new in this release starts from an empty schema
            if released:
                await upgrade(engine, schema, str(old))  # the running release
            await upgrade(engine, schema, str(_migrations(REPO, folder)))  # the new one's first replica
            if released:
                await upgrade(engine, schema, str(old))  # an old replica restarts
        async with engine.connect() as conn:
            for folder, schema in SCHEMAS.items():
                heads = set((await conn.execute(text(f"SELECT version_num FROM {schema}.alembic_version"))).scalars())
                assert heads == _heads(_migrations(REPO, folder)), schema
    finally:
        await engine.dispose()
        await infra.drop_database(pg_server_url, name)


def _heads(location: Path) -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory(str(location)).get_heads())


def test_migrations_since_the_previous_release_only_expand(previous_release: Path) -> None:
    offending = []
    for folder in SCHEMAS:
        if not _migrations(previous_release, folder).is_dir():
            continue  # new in this release: no running replica has its schema yet, its history may still change
        old = {p.name for p in (_migrations(previous_release, folder) / "versions").glob("*.py")}
        for script in sorted((_migrations(REPO, folder) / "versions").glob("*.py")):
            if script.name in old:
                continue
            for number, line in enumerate(script.read_text().splitlines(), 1):
                if DESTRUCTIVE.search(line) and "contract:" not in line:
                    offending.append(f"{script.relative_to(REPO)}:{number}: {line.strip()}")
    assert offending == [], "destructive statements need a `-- contract: <release> stopped using it` note"


def test_the_lint_sees_a_destructive_statement() -> None:
    assert DESTRUCTIVE.search("ALTER TABLE billing.accounts DROP COLUMN subsidy")
    assert DESTRUCTIVE.search("ALTER TABLE x ALTER COLUMN y SET NOT NULL")
    assert not DESTRUCTIVE.search("ALTER TABLE x ADD COLUMN y text")
