"""The collector answers only requests signed with a service token for it: nothing is registered otherwise."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from shuidian_collector.app import create_app
from shuidian_collector.settings import CollectorSettings
from shuidian_devstack.infra import UNSIGNED, free_port, refused_credentials, serve_ready
from shuidian_kit.db import create_engine

pytestmark = pytest.mark.integration


async def test_unsigned_or_wrongly_signed_requests_are_refused_and_register_nothing(
    database_url: str, mqtt_url: str
) -> None:
    port = free_port()
    settings = CollectorSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        instance_id=f"t-{uuid.uuid4().hex[:8]}",
        mqtt_clean_session=True,
        http_port=port,
    )
    gateway = f"gw-auth-{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url)
    try:
        async with serve_ready(create_app(settings), port) as client:  # ready: /readyz needs no token
            for case, headers in refused_credentials("collector").items():
                refused = await client.put(
                    f"/v1/gateways/{gateway}", json={"name": "x"}, headers=headers, auth=UNSIGNED
                )
                assert refused.status_code == 401, case
                assert refused.headers["content-type"] == "application/problem+json"
                assert (await client.get("/v1/meters", headers=headers, auth=UNSIGNED)).status_code == 401, case
            async with engine.connect() as conn:
                found = await conn.scalar(
                    text("SELECT count(*) FROM collector.gateways WHERE gateway_id = :g"), {"g": gateway}
                )
            assert found == 0
            # The same request, signed for the collector, is answered.
            assert (await client.put(f"/v1/gateways/{gateway}", json={"name": "x"})).status_code == 204
    finally:
        await engine.dispose()
