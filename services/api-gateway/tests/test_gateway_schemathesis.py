"""Schemathesis against the gateway's own OpenAPI, served on a real socket: every check (status
codes and content types as documented, response schemas, authentication honoured, no 5xx), once
as a system administrator over the staff and identity API and once as a tenant over /v1/me.

The seed rotates (the day's date unless SCHEMATHESIS_SEED is set) and is printed, with every failure, so a
failure reproduces with `SCHEMATHESIS_SEED=<seed>`. Each run has a time budget: once it is spent, the
remaining operations get one example each, so every operation is still called and the module stays within
a few minutes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from shuidian_devstack import infra
from shuidian_gateway.testing import Harness, gateway_harness

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("SCHEMATHESIS_SEED") or datetime.now(UTC).strftime("%Y%m%d"))
EXAMPLES = 12
BUDGET_SECONDS = 45.0  # per run; four runs


@pytest.fixture(scope="module")
def served(pg_server_url: str, mqtt_url: str) -> Iterator[Harness]:
    """The harness in its own thread, event loop and database: schemathesis calls it synchronously,
    and what it creates (users, keys, webhooks to hosts that do not resolve) must not leak into
    the gateways of other test modules."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        name = f"shuidian_fuzz_{uuid.uuid4().hex[:12]}"
        database_url = await infra.create_database(pg_server_url, name, exist_ok=False)
        try:
            async with gateway_harness(database_url, mqtt_url, complete_backends=True) as harness:
                box["harness"] = harness
                ready.set()
                await stop.wait()
        except BaseException as err:
            box["error"] = err
            ready.set()
            raise
        finally:
            await infra.drop_database(pg_server_url, name)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "the gateway did not start"
    if "error" in box:
        raise box["error"]
    yield box["harness"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)


@pytest.fixture(scope="module")
def api_schema(served: Harness) -> Any:
    # 412 is the one answer a schema cannot rule out: any ETag is well formed, only the current one matches.
    # NUL is refused in every path, query and body (docs/api.md), which a free-form object body's schema
    # cannot say: positive cases carry none; the negative runs still send them.
    config = SchemathesisConfig.from_dict(
        {
            "generation": {"allow-x00": False},
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 409, 412, 429]}},
        }
    )
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config)


def _bearer(served: Harness, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.tokens[who]['access_token']}"}


def _fuzz(api_schema: Any, headers: dict[str, str], mode: GenerationMode) -> list[str]:
    """Run every operation's strategy; collect the failures of all operations, not just the first."""
    print(f"schemathesis seed {SEED} ({mode.value}); reproduce with SCHEMATHESIS_SEED={SEED}")
    failures: list[str] = []
    started = time.monotonic()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        examples = EXAMPLES if time.monotonic() - started < BUDGET_SECONDS else 1

        @seed(SEED)
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers)

        try:
            run()
        except Unsatisfiable:
            continue  # nothing to vary (no parameters): there is no negative case
        except (Exception, BaseExceptionGroup) as err:  # a check failed: record it with the operation's name
            failures.append(f"{operation.label} (SCHEMATHESIS_SEED={SEED}): {err}"[:2000])
    print(f"{mode.value}: {time.monotonic() - started:.1f} s")
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_staff_api_conforms_to_its_openapi(api_schema: Any, served: Harness, mode: GenerationMode) -> None:
    failures = _fuzz(api_schema.exclude(path_regex=r"^/v1/me"), _bearer(served, "admin"), mode)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_tenant_api_conforms_to_its_openapi(api_schema: Any, served: Harness, mode: GenerationMode) -> None:
    # The live event stream never ends by itself; test_gateway_live_sse.py covers it over a real socket.
    tenant_api = api_schema.include(path_regex=r"^/v1/me").exclude(path="/v1/me/live", method="GET")
    failures = _fuzz(tenant_api, _bearer(served, "tenant_a"), mode)
    assert not failures, "\n\n".join(failures)
