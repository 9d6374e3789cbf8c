"""Billing's migration history has one head, and every database a release left behind upgrades to it:
an empty one, one at the two parallel 0002 branches, one at the two 0003 heads (before their merge),
one at the merge revision 0004. Each ends with the same schema as a database migrated from empty."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files

import pytest
import pytest_asyncio
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack import infra
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade

pytestmark = pytest.mark.integration
MIGRATIONS = str(files("shuidian_billing") / "migrations")
SCHEMA = "billing"
# Every set of revisions a database could have been left at by a release (alembic_version rows).
EARLIER_STATES: list[tuple[str, ...]] = [
    ("0001",),
    ("0002_payments", "0002_premises"),
    ("0003_lease_lifecycle", "0003_reports"),
    ("0004_level_reannounce",),
]


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    config.attributes["schema"] = SCHEMA
    return config


def _upgrade_to(connection: Connection, targets: Sequence[str]) -> None:
    for target in targets:
        command.upgrade(_config(connection), target)


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_engine(pg_server_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database of its own (migrations run from nothing), dropped afterwards."""
    name = f"shuidian_migrations_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    engine = create_engine(url, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()
        await infra.drop_database(pg_server_url, name)


async def _schema_of(engine: AsyncEngine) -> dict[str, list[tuple[object, ...]]]:
    """The billing schema as the catalogue sees it: columns, constraints, indexes, triggers, functions."""
    queries = {
        "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'billing' ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'billing'::regnamespace ORDER BY 1, 2",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'billing' ORDER BY 1, 2",
        "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = 'billing'::regnamespace AND NOT tgisinternal ORDER BY 1, 2",
        "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'billing'::regnamespace ORDER BY 1",
        "version": "SELECT version_num FROM billing.alembic_version ORDER BY 1",
    }
    async with engine.connect() as conn:
        return {name: [tuple(row) for row in await conn.execute(text(sql))] for name, sql in queries.items()}


def test_history_has_one_head() -> None:
    script = ScriptDirectory(MIGRATIONS)
    assert script.get_heads() == ["0010_payment_problems"]
    assert script.get_bases() == ["0001"]


async def test_empty_and_earlier_databases_reach_the_same_head(fresh_engine: AsyncEngine, pg_server_url: str) -> None:
    await upgrade(fresh_engine, SCHEMA, MIGRATIONS)
    expected = await _schema_of(fresh_engine)
    assert expected["version"] == [("0010_payment_problems",)]
    assert len(expected["columns"]) > 100  # the schema is really there, not two empty dumps compared

    for state in EARLIER_STATES:
        name = f"shuidian_migrations_{uuid.uuid4().hex[:12]}"
        url = await infra.create_database(pg_server_url, name, exist_ok=False)
        engine = create_engine(url, pool_size=2)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
                await conn.run_sync(_upgrade_to, state)
            async with engine.connect() as conn:
                at = sorted(r[0] for r in await conn.execute(text("SELECT version_num FROM billing.alembic_version")))
            assert at == sorted(state)
            await upgrade(engine, SCHEMA, MIGRATIONS)
            assert await _schema_of(engine) == expected, f"a database at {state} upgrades to a different schema"
        finally:
            await engine.dispose()
            await infra.drop_database(pg_server_url, name)
