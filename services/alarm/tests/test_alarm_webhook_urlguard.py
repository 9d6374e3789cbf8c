"""Alarm's webhooks reach internal addresses only when an operator allow-listed them (real sockets)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from shuidian_alarm.adapters.notify.channels import WebhookChannel
from shuidian_alarm.domain.notify.delivery import Outgoing
from shuidian_alarm.settings import AlarmSettings
from shuidian_devstack.infra import free_port
from shuidian_kit.urlguard import UrlPolicy


@asynccontextmanager
async def receiver(port: int, seen: list[bytes]) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        yield f"http://127.0.0.1:{port}/hook"


def outgoing(address: str) -> Outgoing:
    return Outgoing(notification_id=uuid.uuid4(), channel="webhook", address=address, subject="s", body="b", payload={})


@pytest.mark.parametrize(
    "address",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.8/hook",
        "http://localhost:8002/v1/payments/sandbox/pay",
        "ftp://files.example/",
    ],
)
async def test_an_internal_webhook_address_is_a_final_refusal(address: str) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        result = await WebhookChannel(http, "s" * 20).send(outgoing(address))
    assert not result.ok
    assert not result.retryable
    assert result.detail.startswith("refused")


async def test_loopback_is_refused_by_default_and_delivered_when_allow_listed() -> None:
    seen: list[bytes] = []
    async with receiver(free_port(), seen) as url, httpx.AsyncClient(timeout=5) as http:
        refused = await WebhookChannel(http, "s" * 20).send(outgoing(url))
        assert seen == []
        policy = AlarmSettings(environment="test", webhook_allowed_networks="127.0.0.1/32").webhook_policy
        delivered = await WebhookChannel(http, "s" * 20, policy).send(outgoing(url))
    assert not refused.ok
    assert "loopback" in refused.detail
    assert delivered.ok
    assert len(seen) == 1


def test_the_allow_list_setting_is_checked_at_start() -> None:
    assert AlarmSettings(environment="test").webhook_policy == UrlPolicy()
    with pytest.raises(ValueError, match="neither a network"):
        AlarmSettings(environment="test", webhook_allowed_networks="not a network")
