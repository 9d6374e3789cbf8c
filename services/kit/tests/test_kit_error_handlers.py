"""The one problem-details mapping of a service's errors, headers included."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shuidian_kit.errors import MqttUnavailable, NotFound, ServiceError
from shuidian_kit.service import install_error_handlers
from shuidian_shared.errors import ErrorBody, ShuidianError


class Throttled(ServiceError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


def app_raising(error: ShuidianError) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    return app


async def call(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kit") as client:
        return await client.get("/boom")


async def test_a_service_error_carries_its_headers_into_the_problem_response() -> None:
    response = await call(app_raising(Throttled("slow down / 请稍后再试", retry_after=37)))
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "37"
    assert response.json() == {
        "type": "https://shuidian.dev/problems/too_many_requests",
        "title": "too many requests",
        "status": 429,
        "detail": "slow down / 请稍后再试",
        "code": "too_many_requests",
    }


async def test_a_service_error_without_headers_adds_none() -> None:
    response = await call(app_raising(NotFound("no such meter")))
    assert response.status_code == 404
    assert "retry-after" not in response.headers
    assert response.json()["code"] == "not_found"


async def test_the_problem_body_is_the_same_bytes_as_ever() -> None:
    # What every service answered before the errors had one root: the key order and compact separators included.
    response = await call(app_raising(NotFound("没有表计 E-1 · no meter E-1")))
    assert (
        response.content
        == (
            '{"type":"https://shuidian.dev/problems/not_found","title":"not found","status":404,'
            '"detail":"没有表计 E-1 · no meter E-1","code":"not_found"}'
        ).encode()
    )


class Refused(ShuidianError):
    """A package's own root: pure, no kit, with members of its own in the body."""

    status_code = 422
    code = "import_refused"

    def __init__(self, lines: list[int]) -> None:
        super().__init__(f"{len(lines)} line(s) refused")
        self.lines = lines

    def problem_body(self) -> dict[str, Any]:
        return {**super().problem_body(), "errors": self.lines}


async def test_any_shuidian_error_is_answered_by_the_kit_with_its_own_members() -> None:
    response = await call(app_raising(Refused([3, 7])))
    assert response.status_code == 422
    assert response.content == (
        b'{"type":"https://shuidian.dev/problems/import_refused","title":"import refused","status":422,'
        b'"detail":"2 line(s) refused","code":"import_refused","errors":[3,7]}'
    )
    assert ErrorBody.model_validate_json(response.content).code == "import_refused"


@pytest.mark.parametrize("error", [MqttUnavailable("broker at 10.0.0.7 refused"), ShuidianError("secret path /x")])
async def test_an_error_that_does_not_say_how_to_answer_is_an_internal_error_its_text_not_shown(
    error: ShuidianError,
) -> None:
    response = await call(app_raising(error))
    assert response.status_code == 500
    assert response.json() == {
        "type": "https://shuidian.dev/problems/internal_error",
        "title": "internal error",
        "status": 500,
        "detail": "an unexpected error occurred",
        "code": "internal_error",
    }


def _roots() -> list[type[Exception]]:
    from shuidian_alarm.errors import AlarmError
    from shuidian_billing.errors import BillingError
    from shuidian_collector.errors import CollectorError
    from shuidian_control.errors import ControlError
    from shuidian_gateway.errors import GatewayError
    from shuidian_insights.errors import InsightsError
    from shuidian_simulator.errors import SimulatorError

    return [AlarmError, BillingError, CollectorError, ControlError, GatewayError, InsightsError, SimulatorError]


@pytest.mark.parametrize("root", _roots(), ids=lambda root: root.__name__)
def test_every_package_root_derives_from_the_one_base(root: type[Exception]) -> None:
    assert issubclass(root, ShuidianError)
    assert "__init__" not in vars(root), "the base's constructor is the one (detail, code=, status_code=)"
