"""The staff console in real Chromium against the real platform: each role does its job through the
browser, in Chinese, and every main page is photographed (web/test-artifacts/console-*.png)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from shuidian_devstack.pytest_plugin import eventually

from .conftest import WebStack, eventually_visible, sign_in, staff_get

pytestmark = pytest.mark.e2e


async def shoot(page: Page, artifacts: Path, name: str) -> None:
    # The alarms, commands and devices pages keep the staff stream open, so the network is never idle
    # there: wait for the page's reads to settle, at most a few seconds.
    await page.wait_for_load_state("load")
    with contextlib.suppress(PlaywrightTimeoutError):
        await page.wait_for_load_state("networkidle", timeout=3000)
    await page.screenshot(path=str(artifacts / f"console-{name}.png"), full_page=True)


async def test_a_cashier_takes_cash_and_prints_a_receipt(page: Page, web_stack: WebStack, artifacts: Path) -> None:
    before = Decimal((await staff_get(web_stack, "/v1/accounts/A102"))["balance"])
    await sign_in(page, "cashier")
    await page.wait_for_url(re.compile(r"/console/cash$"))  # a cashier starts at the counter
    nav = page.get_by_role("menubar")
    await expect(nav.get_by_text("收银台")).to_be_visible()
    await expect(nav.get_by_text("设备")).to_have_count(0)  # not a cashier's
    await expect(nav.get_by_text("报表")).to_have_count(0)

    await page.get_by_label("房号").fill("A102")
    await page.locator("[data-test=cash-find]").click()
    await expect(page.locator("[data-test=cash-household]")).to_contain_text("租户 A102")
    await page.locator("#cash-amount").fill("50")
    await page.evaluate("() => { window.print = () => { window.printed = (window.printed || 0) + 1 } }")
    await page.locator("[data-test=cash-take]").click()

    receipt = page.locator("[data-test=receipt]")
    await expect(receipt).to_be_visible()
    await expect(page.locator("[data-test=receipt-amount]")).to_have_text("¥50.00")
    await shoot(page, artifacts, "cash-receipt")
    await page.locator("[data-test=print]").click()
    assert await page.evaluate("window.printed") == 1
    after = Decimal((await staff_get(web_stack, "/v1/accounts/A102"))["balance"])
    assert after - before == Decimal("50.00")  # the ledger got exactly the cash, once


async def test_a_manager_trips_a_meter_and_maintenance_restores_it(
    page: Page, web_stack: WebStack, artifacts: Path
) -> None:
    # A household with plenty of credit, so nothing but the operators moves its relay.
    await web_stack.staff.post(
        "/v1/accounts/A104/topups",
        json={"amount": "5000", "channel": "cash", "reference": "e2e"},
        headers={"Idempotency-Key": "e2e-trip-credit-A104"},
    )
    await sign_in(page, "manager")
    await page.goto("/console/rooms/room-A104")
    await expect(page.locator("[data-test=household-title]")).to_contain_text("A104")
    await page.locator("[data-test=trip-E-A104]").click()
    await page.get_by_role("dialog").locator("input").fill("检修线路")
    await page.get_by_role("dialog").get_by_role("button", name="确定").click()
    await page.get_by_role("tab", name="远程命令").click()
    await eventually_visible(page, "[data-test=command-state-trip]", "已确认")
    await eventually_visible(page, "[data-test=switch-E-A104]", "已断电")
    await shoot(page, artifacts, "household-tripped")
    assert web_stack.simulator.meter("E-A104").relay_open

    # Maintenance may restore (commands:close) but never trip: the button is not there.
    await page.get_by_role("button", name="退出登录").click()
    await sign_in(page, "maintenance")
    await page.goto("/console/rooms/room-A104")
    await expect(page.locator("[data-test=close-E-A104]")).to_be_visible()
    await expect(page.locator("[data-test=trip-E-A104]")).to_have_count(0)
    await page.locator("[data-test=close-E-A104]").click()
    await page.get_by_role("dialog").locator("input").fill("检修完毕")
    await page.get_by_role("dialog").get_by_role("button", name="确定").click()
    await page.get_by_role("tab", name="远程命令").click()
    await eventually_visible(page, "[data-test=command-state-direct_close]", "已确认")
    await eventually_visible(page, "[data-test=switch-E-A104]", "供电中")
    assert not web_stack.simulator.meter("E-A104").relay_open


async def test_an_alarm_appears_live_and_is_acknowledged(page: Page, web_stack: WebStack, artifacts: Path) -> None:
    # A household well in credit, whose earlier balance alarms have cleared.
    await web_stack.staff.post(
        "/v1/accounts/A103/topups",
        json={"amount": "5000", "channel": "cash", "reference": "e2e"},
        headers={"Idempotency-Key": "e2e-alarm-credit-A103"},
    )
    await eventually(lambda: no_active_alarm(web_stack, "A103"), "A103's balance alarms to clear", 60, interval=1.0)
    await sign_in(page, "maintenance")
    await page.wait_for_url(re.compile(r"/console/alarms$"))  # maintenance starts at the alarms
    await expect(page.locator("[data-test=alarms]")).to_be_visible()
    await expect(page.locator("[data-test=alarms] tr", has_text="A103")).to_have_count(0)

    # The manager raises the household's warning level above its balance: billing reclassifies it,
    # publishes the level, alarm raises a low-balance alarm, and the open page shows it by itself.
    response = await web_stack.staff.put(
        "/v1/accounts/A103", json={"name": "房间 A103", "estate_id": "demo", "low_1": "99999"}
    )
    response.raise_for_status()
    row = page.locator("[data-test=alarms] tr", has_text="A103").filter(has_text="余额不足")
    await row.first.wait_for(state="visible", timeout=60_000)  # no reload
    await shoot(page, artifacts, "alarms-live")
    await row.first.get_by_role("button", name="确认").click()
    await expect(row).to_have_count(0)  # no longer open
    await page.get_by_role("radio", name="已确认").check(force=True)
    await expect(page.locator("[data-test=alarms] tr", has_text="A103").filter(has_text="余额不足")).to_have_count(1)
    acknowledged = await staff_get(web_stack, "/v1/alarms", source_id="A103", state="acknowledged")
    assert acknowledged["items"], "the acknowledgement did not reach alarm"


async def no_active_alarm(stack: WebStack, account: str) -> bool | None:
    active = await staff_get(stack, "/v1/alarms", source_id=account, state="active")
    return True if not active["items"] else None


async def test_a_tariff_is_edited_with_validation_and_a_preview(
    page: Page, web_stack: WebStack, artifacts: Path
) -> None:
    # Tariffs span every estate: an all-estates role (the administrator) edits them.
    await sign_in(page, "admin")
    await page.goto("/console/billing")
    await page.locator("[data-test=tariff-new]").click()
    editor = page.locator("[data-test=tariff-editor]")
    await editor.locator("input[data-test=flat-price], [data-test=flat-price] input").fill("0.6.5")
    await editor.locator("[data-test=tariff-save]").click()
    await expect(editor).to_contain_text("单价格式")  # refused before it is sent
    await editor.locator("input[data-test=flat-price], [data-test=flat-price] input").fill("0.65")
    await editor.locator("#tariff-from").fill("2027-01-01")
    await expect(page.locator("[data-test=preview-total]")).to_have_text("¥97.50")  # 150 kWh × 0.65
    await editor.get_by_role("button", name="+ 固定费").click()
    await editor.get_by_label("每月金额").fill("5")
    await expect(page.locator("[data-test=preview-total]")).to_have_text("¥102.50")
    await shoot(page, artifacts, "tariff-preview")
    await editor.locator("[data-test=tariff-save]").click()
    await expect(page.locator("[data-test=tariff-versions]")).to_contain_text("单一价 0.65")
    versions = await staff_get(web_stack, "/v1/tariffs/electricity/versions")
    assert any(Decimal(v["components"][0].get("unit_price", "0")) == Decimal("0.65") for v in versions["items"])


PAGES = {
    "manager": ["/", "/rooms", "/rooms/room-A101", "/devices", "/commands", "/alarms", "/reports"],
    "admin": ["/billing"],
    "cashier": ["/cash"],
}


@pytest.mark.parametrize("width", [1440, 360])
async def test_every_main_page_renders_in_chinese_at_desktop_and_phone_widths(
    page: Page, web_stack: WebStack, artifacts: Path, width: int
) -> None:
    await page.set_viewport_size({"width": width, "height": 900})
    for user, paths in PAGES.items():
        await sign_in(page, user)
        for path in paths:
            await page.goto(f"/console{path}")
            await expect(page.locator("h2.page-title")).to_be_visible()
            await expect(page.locator(".el-alert--error")).to_have_count(0)
            name = (path.strip("/").replace("/", "-") or "overview") + ("" if width > 1000 else "-360")
            await shoot(page, artifacts, name)
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is wider than a {width} px window by {overflow} px"
        await page.get_by_role("button", name="退出登录").click()
        await asyncio.sleep(0)
