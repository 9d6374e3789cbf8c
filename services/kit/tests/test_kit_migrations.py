"""Migration histories: one head per schema, and a forked history refused at start with its heads named."""

from __future__ import annotations

import uuid
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from shuidian_kit.db import create_engine
from shuidian_kit.errors import MigrationError
from shuidian_kit.migrations import upgrade

SERVICES = [
    "shuidian_alarm",
    "shuidian_billing",
    "shuidian_collector",
    "shuidian_control",
    "shuidian_gateway",
    "shuidian_insights",
]

REVISION = """
from alembic import op

revision = "{name}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE {name} (id int)")


def downgrade() -> None:
    pass
"""


@pytest.mark.parametrize("package", SERVICES)
def test_every_service_history_has_one_head(package: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(files(package) / "migrations"))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def _forked_history(root: Path) -> Path:
    versions = root / "versions"
    versions.mkdir(parents=True)
    (root / "env.py").write_text(
        "from alembic import context\n\nfrom shuidian_kit.migrations import run_env\n\nrun_env(context)\n"
    )
    (root / "script.py.mako").write_text("")
    for name in ("fork_a", "fork_b"):
        (versions / f"{name}.py").write_text(REVISION.format(name=name))
    return root


async def test_a_forked_history_is_refused_with_its_heads_named(database_url: str, tmp_path: Path) -> None:
    location = _forked_history(tmp_path / "migrations")
    schema = f"fork_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    try:
        with pytest.raises(MigrationError, match=r"2 migration heads \(fork_a, fork_b\)"):
            await upgrade(engine, schema, str(location))
        async with engine.connect() as conn:
            created = await conn.execute(text("SELECT to_regclass(:t)"), {"t": f'"{schema}".fork_a'})
            assert created.scalar() is None  # nothing of either branch was applied
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
