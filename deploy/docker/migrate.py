"""The one-off migration job of an upgrade: bring this image's service schema to the image's newest revision,
then exit. `docker compose -p shuidian run --rm --no-deps billing migrate` (docs/deploy.md, Upgrades).

The services also migrate at start, under the same advisory lock, so the job is what lets an operator migrate
before any new replica starts and see a failed migration as a failed job rather than a crash-looping service.
"""

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

from sqlalchemy import text

from shuidian_kit.db import create_engine
from shuidian_kit.migrations import upgrade

SCHEMAS = {"collector": "collector", "billing": "billing", "control": "control", "alarm": "alarm",
           "insights": "insights", "gateway": "gateway"}  # fmt: skip


async def migrate(service: str, database_url: str) -> str:
    spec = importlib.util.find_spec(f"shuidian_{service}")
    if spec is None or spec.origin is None:
        raise SystemExit(f"migrate: this image has no package shuidian_{service}")
    location = Path(spec.origin).parent / "migrations"
    engine = create_engine(database_url, pool_size=1, application_name=f"{service}-migrate")
    try:
        await upgrade(engine, SCHEMAS[service], str(location))
        async with engine.connect() as conn:
            heads = (await conn.execute(text(f"SELECT version_num FROM {SCHEMAS[service]}.alembic_version"))).scalars()
            return ", ".join(sorted(heads))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    service = os.environ["SERVICE"]
    if service not in SCHEMAS:
        sys.exit(f"migrate: {service} has no schema")
    url = os.environ.get("DATABASE_URL") or sys.exit("migrate: set DATABASE_URL")
    revision = asyncio.run(migrate(service, url))
    version = os.environ.get("SHUIDIAN_VERSION", "dev")
    sys.stdout.write(f"migrate: schema {SCHEMAS[service]} at {revision} ({service} {version})\n")
