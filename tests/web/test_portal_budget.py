"""The tenant portal's performance budget (web/budget.json): on a throttled profile in Chromium
(slow-3G-like network through CDP's Network.emulateNetworkConditions, 4x CPU slowdown) the first
contentful paint and the moment the sign-in form can be used, and the gzipped JS and CSS the first
page downloads; the charts (ECharts) must not be among them, and no chunk may outgrow the budget
(a whole-library import of Vant or ECharts would). Measurements go to web/test-artifacts/."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.web.conftest import REPO, WebStack
from tests.web.portal_fixtures import PHONE

pytest_plugins = ["tests.web.portal_fixtures"]
pytestmark = pytest.mark.e2e

BUDGET: dict[str, Any] = json.loads((REPO / "web" / "budget.json").read_text())
KB = 1024


def gzipped(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


async def measure_first_page(url: str, browser: Browser) -> dict[str, Any]:
    profile = BUDGET["profile"]
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, locale="zh-CN")
    try:
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        await cdp.send("Network.enable")
        await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        await cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": profile["latency_ms"],
                "downloadThroughput": profile["download_kbps"] * 1000 / 8,
                "uploadThroughput": profile["upload_kbps"] * 1000 / 8,
            },
        )
        await cdp.send("Emulation.setCPUThrottlingRate", {"rate": profile["cpu_slowdown"]})
        assets: dict[str, int] = {}

        async def keep(response: Any) -> None:
            if response.request.resource_type in ("script", "stylesheet") and response.ok:
                assets[response.url] = gzipped(await response.body())

        page.on("response", keep)
        await page.goto(f"{url}/portal/login", wait_until="commit")
        await page.locator("form button[type=submit]").wait_for()
        ready_ms = await page.evaluate("performance.now()")
        await page.wait_for_load_state("load")
        fcp_ms = await page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
        return {"first_contentful_paint_ms": fcp_ms, "sign_in_ready_ms": ready_ms, "assets": assets}
    finally:
        await context.close()


async def test_the_portals_first_page_is_within_its_budget(
    web_stack: WebStack, phone_browser: Browser, artifacts: Path
) -> None:
    budget = BUDGET["portal"]
    measured = await measure_first_page(web_stack.url, phone_browser)
    first_page_kb = sum(measured["assets"].values()) / KB
    dist = REPO / "web" / "dist" / "assets"
    chunks = {p.name: gzipped(p.read_bytes()) / KB for p in dist.iterdir() if p.suffix in (".js", ".css")}
    portal_chunks = {name: kb for name, kb in chunks.items() if not name.startswith("console")}
    report = {
        "profile": BUDGET["profile"],
        "first_contentful_paint_ms": round(measured["first_contentful_paint_ms"]),
        "sign_in_ready_ms": round(measured["sign_in_ready_ms"]),
        "first_page_js_css_gzip_kb": round(first_page_kb, 1),
        "first_page_assets": sorted(Path(u).name for u in measured["assets"]),
        "largest_chunk_gzip_kb": round(max(portal_chunks.values()), 1),
        "budget": budget,
    }
    (artifacts / "portal-budget.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))

    assert not any("UsageChart" in name for name in report["first_page_assets"]), "charts load with the first page"
    assert report["first_contentful_paint_ms"] <= budget["first_contentful_paint_ms"], report
    assert report["sign_in_ready_ms"] <= budget["sign_in_ready_ms"], report
    assert report["first_page_js_css_gzip_kb"] <= budget["first_page_js_css_gzip_kb"], report
    assert report["largest_chunk_gzip_kb"] <= budget["largest_chunk_gzip_kb"], report
