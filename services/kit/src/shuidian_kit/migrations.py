"""Alembic migrations per service schema, applied on start under an advisory lock.

A service keeps its history in `<package>/migrations` with an `env.py` that calls
`run_env()`; migration scripts write plain SQL into their own schema.

During a rolling upgrade old and new replicas run side by side, so migrations expand and contract
(docs/deploy.md, Upgrades): a release only adds what its code needs and removes only what the release
before it stopped using. An older replica that (re)starts on a schema a newer release already migrated
therefore runs on it as it is, rather than failing on a revision it does not know.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_kit.errors import MigrationError

log = logging.getLogger(__name__)


def _applied(connection: Connection, schema: str) -> list[str]:
    table = f'"{schema}".alembic_version'
    if connection.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return []
    return list(connection.execute(text(f"SELECT version_num FROM {table}")).scalars())


def _unknown(script: ScriptDirectory, revisions: list[str]) -> list[str]:
    unknown = []
    for revision in revisions:
        try:
            script.get_revision(revision)
        except CommandError:
            unknown.append(revision)
    return unknown


def _upgrade(connection: Connection, schema: str, script_location: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    script = ScriptDirectory.from_config(config)
    newer = _unknown(script, _applied(connection, schema))
    if newer:
        log.warning(
            "schema %s is at %s, which a newer release applied: this older release runs on it unmigrated",
            schema,
            ", ".join(newer),
        )
        return
    heads = script.get_heads()
    if len(heads) != 1:
        # A history that forks is merged by a migration, in the repository, never at start.
        raise MigrationError(
            f"schema {schema} has {len(heads)} migration heads ({', '.join(sorted(heads))}); add a merge revision"
        )
    command.upgrade(config, "head")


async def upgrade(engine: AsyncEngine, schema: str, script_location: str) -> None:
    """Create the schema if needed and bring it to the newest revision."""
    lock_key = zlib.crc32(f"shuidian-migrate-{schema}".encode())
    try:
        async with engine.begin() as conn:
            # Replicas starting together must not migrate the same schema at once.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.run_sync(_upgrade, schema, script_location)
    except Exception as err:
        raise MigrationError(f"migrating schema {schema} failed: {err}") from err


def run_env(context: Any) -> None:
    """Body of every service's alembic env.py: run online against the connection we were handed."""
    connection = context.config.attributes["connection"]
    schema = context.config.attributes["schema"]
    context.configure(connection=connection, version_table_schema=schema, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
