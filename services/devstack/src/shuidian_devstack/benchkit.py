"""Shared pieces of the benchmarks: JSON output and the infrastructure they run against.

Runs against DATABASE_URL / MQTT_URL when set (CI's PostgreSQL and Mosquitto), otherwise embedded
ones; every benchmark gets its own fresh database.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from shuidian_devstack import infra


def emit(name: str, value: float, unit: str, target: float, ok: bool, **context: Any) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 3), "unit": unit, "target": target, "ok": ok, **context}),
        flush=True,
    )


@contextlib.asynccontextmanager
async def infrastructure() -> AsyncIterator[tuple[str, str]]:
    pg_dir: Path | None = None
    broker: infra.Broker | None = None
    server = os.environ.get("DATABASE_URL")
    if not server:
        pg_dir = Path(tempfile.mkdtemp(prefix="shuidian-bench-pg-"))
        server = infra.embedded_postgres(pg_dir)
    mqtt_url = os.environ.get("MQTT_URL")
    if not mqtt_url:
        broker = infra.Broker(Path(tempfile.mkdtemp(prefix="shuidian-bench-mqtt-")))
        mqtt_url = broker.start()
    name = f"shuidian_bench_{uuid.uuid4().hex[:8]}"
    database_url = await infra.create_database(server, name, exist_ok=False)
    try:
        yield database_url, mqtt_url
    finally:
        await infra.drop_database(server, name)
        if broker:
            broker.stop()
        if pg_dir:
            infra.stop_embedded_postgres(pg_dir)
