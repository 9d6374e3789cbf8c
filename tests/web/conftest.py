"""Browser end-to-end tests: real Chromium (Debian's `chromium`) driven by Playwright against the
real platform — collector, billing, control, alarm and the gateway serving the built front-end —
with the meter simulator, real PostgreSQL and the real broker.

Fixtures: `web_stack` (the platform with a small demo estate and its sign-ins, once per session),
`browser` (one Chromium per session) and `page` (a fresh context per test: its own storage, so no
test inherits another's sign-in). Screenshots go to web/test-artifacts/ (gitignored).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from shuidian_devstack.demo import DemoEstate
from shuidian_devstack.platform import STAFF_KEY, Platform, platform
from shuidian_devstack.pytest_plugin import private_database
from shuidian_devstack.seed import DEMO_PASSWORD, seed, seed_users
from shuidian_simulator import Simulator
from shuidian_simulator.demo import demo_estate

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
ARTIFACTS = WEB / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a browser with no display, no sandbox (containers), and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ACCELERATION = 1800  # half an hour of household consumption per second: the cheapest room runs dry in a minute


@dataclass
class WebStack:
    """The running platform; `url` is the gateway, which serves /console/ and /portal/."""

    platform: Platform
    simulator: Simulator
    estate: DemoEstate
    url: str

    @property
    def staff(self) -> httpx.AsyncClient:
        return self.platform.staff


def built_front_end() -> Path:
    """web/dist, built by `make web` unless it is there and newer than the sources."""
    if not (WEB / "dist" / "console.html").exists() or os.environ.get("WEB_REBUILD"):
        subprocess.run(["make", "-C", str(REPO), "web"], check=True)
    return WEB / "dist"


@contextlib.asynccontextmanager
async def demo_stack(
    database_url: str, mqtt_url: str, data_dir: Path, rooms_per_building: int = 4
) -> AsyncIterator[WebStack]:
    """The demo estate of `make run`, smaller and faster, on free ports: one estate `demo`, rooms A101…,
    their tenants (username = room code) and one staff user per role, all with the demo password."""
    os.environ.setdefault("GATEWAY_WEB_ROOT", str(built_front_end()))
    sim_estate = demo_estate(buildings=1, rooms_per_building=rooms_per_building, acceleration=ACCELERATION)
    estate_file = data_dir / "estate.json"
    estate_file.write_text(sim_estate.model_dump_json())
    estate = DemoEstate.load_or_create(estate_file)
    overrides: dict[str, dict[str, Any]] = {
        "billing": {
            "flush_interval_seconds": 1.0,
            "max_plausible_kwh_per_hour": Decimal(60 * ACCELERATION),
            "max_plausible_m3_per_hour": Decimal(10 * ACCELERATION),
        },
        # Every browser of the tests signs in from 127.0.0.1, and each page load refreshes its token:
        # far more than the 20 sign-ins a minute one address gets.
        "gateway": {"login_attempts_per_minute": 10_000},
        # No protected windows: CI runs at night and at weekends too.
        "control": {"nights_start": None, "nights_end": None, "protect_weekends": False, "protect_holidays": False},
    }
    async with (
        Simulator(estate.estate) as simulator,
        platform(database_url, mqtt_url, instance="web-e2e", overrides=overrides) as p,
    ):
        premises = estate.premises()
        await seed(p.internal, p.urls, estate.buses(simulator.endpoints()), estate.accounts(), premises=premises)
        async with httpx.AsyncClient(timeout=10.0) as client:
            await seed_users(client, p.urls["gateway"], STAFF_KEY, premises)
        yield WebStack(p, simulator, estate, p.urls["gateway"])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def web_stack(pg_server_url: str, mqtt_url: str) -> AsyncIterator[WebStack]:
    # The demo estate's tariffs and sign-ins in a database of their own: other tests' tariff versions would refuse
    # the demo's, and their sign-ins count against the same address.
    with tempfile.TemporaryDirectory(prefix="shuidian-web-") as data_dir:
        async with (
            private_database(pg_server_url, "shuidian_web") as database_url,
            demo_stack(database_url, mqtt_url, Path(data_dir)) as stack,
        ):
            yield stack


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """Debian's Chromium, driven by Playwright (the browsers Playwright would download are never used).
    Playwright starts it with a fresh temporary --user-data-dir of its own and removes it afterwards."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, web_stack: WebStack) -> AsyncIterator[Page]:
    """A fresh context per test (its own storage: no sign-in carried over), zh-CN, a desktop window.
    Errors the page throws fail the test."""
    context = await browser.new_context(
        base_url=web_stack.url, locale="zh-CN", timezone_id="Asia/Shanghai", viewport={"width": 1440, "height": 900}
    )
    context.set_default_timeout(15_000)
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert errors == [], f"the page threw: {errors}"


async def sign_in(page: Page, username: str, app: str = "console") -> None:
    """Sign in through the app's own form, as a person would (Enter submits)."""
    await page.goto(f"/{app}/login")
    await page.get_by_label("用户名").fill(username)
    await page.get_by_label("密码").fill(DEMO_PASSWORD)
    await page.get_by_label("密码").press("Enter")
    await page.wait_for_url(lambda url: "/login" not in url)


async def eventually_visible(page: Page, selector: str, text: str, seconds: float = 60) -> None:
    """Wait until `selector` shows `text` (the page follows live state by itself; no reloads)."""
    await page.locator(selector, has_text=text).first.wait_for(state="visible", timeout=seconds * 1000)


async def staff_get(stack: WebStack, path: str, **params: str) -> Any:
    response = await stack.staff.get(path, params=params)
    response.raise_for_status()
    return response.json()
