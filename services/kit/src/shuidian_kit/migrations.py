"""Alembic migrations per service schema, applied on start under an advisory lock.

A service keeps its history in `<package>/migrations` with an `env.py` that calls
`run_env()`; migration scripts write plain SQL into their own schema.
"""

from __future__ import annotations

import zlib
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_kit.errors import MigrationError


def _upgrade(connection: Connection, schema: str, script_location: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, "heads")  # parallel branches of one schema may both apply


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
