"""Configured URLs reach public receivers only, unless allow-listed; the checked address is the one
connected to (real sockets on 127.0.0.x)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from shuidian_devstack.infra import free_port
from shuidian_kit.urlguard import UrlPolicy, UrlRefused, check_url, guarded_client, parse_url, refusal

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.1.2.3",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None
    with pytest.raises(UrlRefused):
        UrlPolicy().check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    ["ftp://files.example/x", "file:///etc/passwd", "gopher://h.example/", "http://user:pw@8.8.8.8/", "http:///x"],
)
def test_schemes_and_userinfo_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        parse_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8002/v1/payments/sandbox/pay",
        "http://localhost/",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
    ],
)
async def test_configuration_check_refuses_internal_targets(url: str) -> None:
    with pytest.raises(UrlRefused):
        await check_url(url, UrlPolicy())


async def test_allow_list_admits_networks_and_exact_receivers() -> None:
    await check_url("http://127.0.0.1:9000/hook", UrlPolicy.parse("127.0.0.0/8"))
    await check_url("http://localhost:9000/hook", UrlPolicy.parse("localhost:9000"))
    with pytest.raises(UrlRefused):
        await check_url("http://localhost:9001/hook", UrlPolicy.parse("localhost:9000, 10.0.0.0/8"))
    with pytest.raises(ValueError, match="neither a network"):
        UrlPolicy.parse("not-a-network")


@asynccontextmanager
async def receiver(host: str, port: int, seen: list[bytes]) -> AsyncIterator[None]:
    """A minimal HTTP server that records each request head and answers 204."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        yield


async def test_loopback_is_refused_by_default_and_delivered_when_allow_listed() -> None:
    port, seen = free_port(), list[bytes]()
    async with receiver("127.0.0.1", port, seen):
        async with guarded_client(UrlPolicy(), timeout=5) as client:
            with pytest.raises(httpx.ConnectError, match="loopback"):
                await client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
            with pytest.raises(httpx.ConnectError, match="loopback"):
                await client.post(f"http://localhost:{port}/hook", content=b"{}")
        assert seen == []
        async with guarded_client(UrlPolicy.parse("127.0.0.1/32"), timeout=5) as client:
            assert (await client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")).status_code == 204
        assert len(seen) == 1


async def test_redirects_are_not_followed() -> None:
    port, seen = free_port(), list[bytes]()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server, guarded_client(UrlPolicy.parse(f"127.0.0.1:{port}"), timeout=5) as client:
        response = await client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
    assert response.status_code == 307
    assert len(seen) == 1


async def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name answers an allowed address once, then an internal one. The guard
    resolves once and connects to what it checked; a second lookup would reach the other server."""
    port, allowed_hits, internal_hits = free_port(), list[bytes](), list[bytes]()
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answers = iter(["127.0.0.1"])

    async def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            address = next(answers, "127.0.0.3")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    async with (
        receiver("127.0.0.1", port, allowed_hits),
        receiver("127.0.0.3", port, internal_hits),
        guarded_client(UrlPolicy.parse("127.0.0.1/32"), timeout=5) as client,
    ):
        response = await client.post(f"http://rebind.test:{port}/hook", content=b"{}")
        assert response.status_code == 204
        with pytest.raises(httpx.ConnectError, match=r"127\.0\.0\.3"):
            await client.post(f"http://rebind.test:{port}/again", content=b"{}")
    assert len(allowed_hits) == 1
    assert internal_hits == []
    assert f"host: rebind.test:{port}".encode() in allowed_hits[0].lower()
