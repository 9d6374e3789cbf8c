"""Fixtures of the tenant portal's browser tests: Chromium on a phone (390 × 844, touch, zh-CN,
Asia/Shanghai), built on the harness in conftest.py (its `chromium`, `web_stack` and `sign_in`).

The machine's Chromium draws Chinese only with a CJK font, which a CI machine may not have: this
browser gets the Noto Sans CJK collection that the `noto-cjk-sans-otc` package ships (the font the
PDF statements embed) through a fontconfig file of its own, so screenshots read as a phone shows them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import noto_cjk_sans_otc  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, ViewportSize, async_playwright

from tests.web.conftest import CHROMIUM_ARGS, WebStack, sign_in

PHONE: ViewportSize = {"width": 390, "height": 844}


def fontconfig(directory: Path) -> Path:
    """A fontconfig file: the machine's fonts plus the packaged CJK collection."""
    font_dir = Path(str(noto_cjk_sans_otc.FONT_PATH)).parent
    (directory / "cache").mkdir(parents=True, exist_ok=True)
    conf = directory / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n'
        '  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>\n'
        f"  <dir>{font_dir}</dir>\n  <cachedir>{directory / 'cache'}</cachedir>\n</fontconfig>\n"
    )
    return conf


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def phone_browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    conf = fontconfig(tmp_path_factory.mktemp("fonts"))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, env={**os.environ, "FONTCONFIG_FILE": str(conf)}
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def phone(phone_browser: Browser, web_stack: WebStack) -> AsyncIterator[Page]:
    """A fresh phone context per test (its own storage: no sign-in carried over); errors the page
    throws fail the test."""
    context = await phone_browser.new_context(
        base_url=web_stack.url,
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
    )
    context.set_default_timeout(15_000)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"the page threw: {errors}"


async def tenant_home(page: Page, room: str) -> None:
    """Sign in to the portal as the tenant of `room` (the demo's usernames) and wait for the balance."""
    await sign_in(page, room, app="portal")
    await page.locator("[data-test=available]").first.wait_for()
