"""A billing app on a database of its own, driven in-process over HTTP: the harness of billing's
money tests (tests only).

Tariffs are global and a version in force never changes, so a test module that relies on its own
prices runs on a database no other module touches.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_devstack import infra
from shuidian_devstack.pytest_plugin import migrated_engine


@asynccontextmanager
async def billing_on_own_database(pg_server_url: str, mqtt_url: str, instance: str) -> AsyncIterator[FastAPI]:
    """A running billing app (its lifespan entered) on a fresh database, dropped afterwards."""
    name = f"shuidian_money_{uuid.uuid4().hex[:12]}"
    url = await infra.create_database(pg_server_url, name, exist_ok=False)
    try:
        app = create_app(
            BillingSettings(
                environment="test",
                database_url=SecretStr(url),
                mqtt_url=mqtt_url,
                mqtt_clean_session=True,
                instance_id=f"{instance}-{uuid.uuid4().hex[:6]}",
            )
        )
        async with app.router.lifespan_context(app):
            yield app
    finally:
        await infra.drop_database(pg_server_url, name)


def client_of(app: FastAPI) -> httpx.AsyncClient:
    """An HTTP client calling the app in-process, signed with service tokens for billing."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://billing", auth=infra.service_auth("billing")
    )


async def flat_priced_engine(database_url: str) -> AsyncEngine:
    """Billing's schema migrated on `database_url`, with flat prices from 2020 on (electricity 0.613 per
    kWh, water 4.5 per m³) unless the database already has them."""
    engine = await migrated_engine(database_url, "shuidian_billing", "billing")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO billing.tariffs (utility, unit_price, effective_from) VALUES "
                "('electricity', 0.613, '2020-01-01'), ('water', 4.5, '2020-01-01') ON CONFLICT DO NOTHING"
            )
        )
    return engine
