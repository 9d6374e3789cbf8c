"""Every served service counts its HTTP requests by route template and status, and times them."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, HTTPException
from prometheus_client import REGISTRY

from shuidian_kit.httpmetrics import HttpMetrics


def _count(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "shuidian_http_requests_total", {"service": "probe", "method": "GET", "route": route, "status": status}
    )
    return value or 0.0


async def test_requests_are_counted_by_route_template_and_status() -> None:
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        if thing_id == 0:
            raise HTTPException(404)
        return {"id": thing_id}

    app.add_middleware(HttpMetrics, service="probe")
    before = {key: _count(*key) for key in [("/v1/things/{thing_id}", "200"), ("/v1/things/{thing_id}", "404")]}
    unmatched = _count("unmatched", "404")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe") as client:
        assert (await client.get("/v1/things/7")).status_code == 200
        assert (await client.get("/v1/things/8")).status_code == 200
        assert (await client.get("/v1/things/0")).status_code == 404
        assert (await client.get("/nowhere")).status_code == 404
    assert _count("/v1/things/{thing_id}", "200") - before[("/v1/things/{thing_id}", "200")] == 2
    assert _count("/v1/things/{thing_id}", "404") - before[("/v1/things/{thing_id}", "404")] == 1
    assert _count("unmatched", "404") - unmatched == 1
    observed = REGISTRY.get_sample_value(
        "shuidian_http_request_seconds_count", {"service": "probe", "route": "/v1/things/{thing_id}"}
    )
    assert observed is not None
    assert observed >= 3
