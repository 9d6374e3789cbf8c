"""Pytest fixtures for real infrastructure: PostgreSQL and an MQTT broker.

Uses `DATABASE_URL` / `MQTT_URL` when set (CI points them at its PostgreSQL and Mosquitto);
otherwise starts the embedded PostgreSQL wheel and an embedded broker for the session.
Each test session gets its own fresh database, dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_devstack import infra
from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="shuidian-pg-"))
    try:
        yield infra.embedded_postgres(data_dir)
    finally:
        infra.stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    name = f"shuidian_test_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        yield url
    finally:
        await infra.drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    url = os.environ.get("MQTT_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="shuidian-mqtt-"))
    broker = infra.Broker(data_dir)
    try:
        yield broker.start()
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def migrated_engine(database_url: str, package: str, schema: str) -> AsyncEngine:
    """An engine on the session database with `package`'s schema migrated to head."""
    from importlib.resources import files

    engine = create_engine(database_url, pool_size=5)
    await upgrade(engine, schema, str(files(package) / "migrations"))
    return engine
