"""An online top-up in the tenant portal, in real Chromium on a phone against the real platform: the tenant
chooses the provider the platform offers (the sandbox, which is the WeChat Pay v3 emulator running inside
billing), the page shows the order's code_url as a QR code, the sandbox plays the payer, and the page
follows the order until billing has booked the signed notification. The money arrives exactly once, also
when the provider sends its notification again."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.web.conftest import WebStack
from tests.web.portal_fixtures import tenant_home

pytest_plugins = ["tests.web.portal_fixtures"]
pytestmark = pytest.mark.e2e

ROOM = "A103"  # the demo's third room: the other portal tests use A101, A102 and A104


async def _sandbox_payments(stack: WebStack) -> list[dict[str, Any]]:
    billing = stack.platform.urls["billing"]
    response = await stack.platform.internal.get(
        f"{billing}/v1/payments", params={"account_id": ROOM, "channel": "sandbox", "limit": 100}
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_tenant_scans_the_qr_code_pays_and_is_credited_exactly_once(
    phone: Page, web_stack: WebStack, artifacts: Path
) -> None:
    before = {p["payment_id"] for p in await _sandbox_payments(web_stack)}
    await tenant_home(phone, ROOM)
    await phone.locator(f"[data-account={ROOM}] [data-test=topup]").click()
    # The platform offers what billing is configured with: in the demo, the sandbox only.
    await expect(phone.locator("[data-provider]")).to_have_count(1)
    await expect(phone.locator("[data-provider=sandbox]")).to_contain_text("沙箱支付")
    await phone.get_by_role("button", name="¥20", exact=True).click()
    await phone.locator("[data-test=pay]").click()

    qr = phone.locator("[data-test=pay-qr]")
    await expect(qr).to_be_visible()
    assert (await qr.get_attribute("src") or "").startswith("data:image/png;base64,")
    await expect(phone.get_by_text("沙箱二维码")).to_be_visible()
    await expect(phone.locator("[data-test=order-status]")).to_contain_text("待支付")
    await phone.screenshot(path=artifacts / "portal-pay-qr.png")

    await phone.locator("[data-test=sandbox-pay]").click()  # the payer scans and pays
    await expect(phone.locator("[data-test=order-status]")).to_contain_text("支付成功", timeout=60_000)
    await expect(qr).to_have_count(0)
    await phone.screenshot(path=artifacts / "portal-paid.png")

    new = [p for p in await _sandbox_payments(web_stack) if p["payment_id"] not in before]
    assert len(new) == 1, new
    assert Decimal(new[0]["amount"]) == Decimal("20.00")
    order_id = new[0]["reference"]

    # The provider delivers its notification again: billing recognises it and credits nothing more.
    billing = web_stack.platform.urls["billing"]
    again = await web_stack.platform.internal.post(f"{billing}/v1/payments/sandbox/orders/{order_id}/pay")
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] == "replayed"
    after = [p for p in await _sandbox_payments(web_stack) if p["payment_id"] not in before]
    assert [p["payment_id"] for p in after] == [new[0]["payment_id"]]
