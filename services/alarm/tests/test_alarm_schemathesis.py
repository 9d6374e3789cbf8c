"""Schemathesis against the alarm service's own OpenAPI on a real socket: no 5xx for any input, documented
status codes and response schemas, positive and negative (malformed) requests alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from shuidian_alarm.app import create_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port, service_headers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(database_url: str, mqtt_url: str) -> Iterator[str]:
    """The service in its own thread and event loop: schemathesis calls it synchronously."""
    port = free_port()
    settings_ = AlarmSettings(
        environment="test",
        database_url=SecretStr(database_url),
        mqtt_url=mqtt_url,
        mqtt_clean_session=True,
        instance_id=f"fuzz-{port}",
        http_port=port,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings_), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "the alarm service did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def api_schema(served: str) -> Any:
    config = SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 422]}}}
    )
    return schemathesis.openapi.from_url(
        f"{served}/openapi.json", config=config, headers=service_headers("alarm")
    ).exclude(path_regex=r"^/(metrics|healthz|readyz)$")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_conforms_to_its_openapi_and_never_fails_on_bad_input(api_schema: Any, mode: GenerationMode) -> None:
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=service_headers("alarm"))

        try:
            run()
        except Unsatisfiable:
            continue  # nothing to vary: no negative case exists
        except (Exception, BaseExceptionGroup) as err:
            failures.append(f"{operation.label}: {err}"[:2000])
    assert not failures, "\n\n".join(failures)
