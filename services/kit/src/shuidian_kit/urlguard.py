"""Outbound requests to URLs that someone configured (webhooks, notification endpoints) reach the
internet, never the platform's own network, unless an operator allow-listed the receiver.

A URL is refused when its scheme is not http(s), when it carries userinfo, or when its host
resolves to any address that is not a public unicast one: loopback, private (RFC 1918, ULA
fc00::/7), link-local (169.254/16 with the cloud metadata service, fe80::/10), unspecified,
multicast, reserved, shared/CGNAT (100.64/10), documentation, or an IPv6 form of one of those
(IPv4-mapped, 6to4, NAT64). The operator's allow-list (`UrlPolicy.parse`) admits networks (CIDR)
and/or exact `host:port` receivers on premises.

`check_url` answers at configuration time. At delivery time `GuardedTransport` resolves the host
once, checks every address, and connects to the checked address: the URL (Host header, TLS SNI and
certificate check) keeps the name, so a DNS answer that changes between check and connect
(rebinding) cannot reach an internal address. Redirects are not followed (the caller's client must
keep `follow_redirects=False`); if one is, its connection goes through the same check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpcore
import httpx

from shuidian_kit.errors import KitError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = ("http", "https")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
DEFAULT_LIMITS = httpx.Limits()


class UrlRefused(KitError, ValueError):
    """A configured URL may not be called: its scheme, userinfo or an address its host resolves to."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address (None when it is one)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = refusal(inner)
            return f"{reason} (as IPv6 {address})" if reason else None
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata lives here)"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in SHARED, "shared address space (CGNAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """The operator's allow-list: networks and exact `host:port` receivers outbound calls may reach."""

    networks: tuple[IPNetwork, ...] = ()
    endpoints: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: str | Iterable[str]) -> UrlPolicy:
        """From `10.1.2.0/24, 192.168.5.7, hooks.internal:8443, [fd00::5]:443` (comma-separated or a list)."""
        items = entries.split(",") if isinstance(entries, str) else list(entries)
        networks: list[IPNetwork] = []
        endpoints: set[tuple[str, int]] = set()
        for raw in (item.strip() for item in items):
            if not raw:
                continue
            try:
                networks.append(ipaddress.ip_network(raw, strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = raw.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{raw!r} is neither a network (CIDR) nor host:port")
            endpoints.add((host.strip("[]").lower(), int(port)))
        return cls(tuple(networks), frozenset(endpoints))

    def admits_endpoint(self, host: str, port: int) -> bool:
        return (host.strip("[]").lower(), port) in self.endpoints

    def check_address(self, address: IPAddress) -> None:
        """Raise UrlRefused unless `address` is public or inside an allow-listed network."""
        if any(address in network for network in self.networks):
            return
        reason = refusal(address)
        if reason is not None:
            raise UrlRefused(f"{address} is {reason}; only an operator can allow-list it")


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL without userinfo; UrlRefused otherwise."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise UrlRefused(f"not a valid URL: {err}") from err
    if parsed.scheme not in SCHEMES:
        raise UrlRefused("only http and https URLs are allowed")
    if parsed.userinfo:
        raise UrlRefused("credentials in the URL are not allowed; the request is signed instead")
    if not parsed.host:
        raise UrlRefused("the URL has no host")
    return parsed.scheme, parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (one lookup), in the resolver's order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        seen[ipaddress.ip_address(str(sockaddr[0]).split("%")[0])] = None
    return list(seen)


async def checked_addresses(host: str, port: int, policy: UrlPolicy) -> list[IPAddress]:
    """Resolve once and check every address; UrlRefused if any is refused or none is found."""
    try:
        addresses = await resolve(host, port)
    except OSError as err:
        raise UrlRefused(f"cannot resolve {host}: {err}") from err
    if not addresses:
        raise UrlRefused(f"{host} has no address")
    for address in addresses:
        policy.check_address(address)
    return addresses


async def check_url(url: str, policy: UrlPolicy, *, unresolvable_ok: bool = True) -> None:
    """Configuration-time check. A name that does not resolve yet passes when `unresolvable_ok`
    (the receiver may not be up yet); every delivery is checked again by `GuardedTransport`."""
    _, host, port = parse_url(url)
    if policy.admits_endpoint(host, port):
        return
    try:
        addresses = await resolve(host, port)
    except OSError as err:
        if unresolvable_ok:
            return
        raise UrlRefused(f"cannot resolve {host}: {err}") from err
    for address in addresses:
        policy.check_address(address)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to checked addresses: the name is resolved here, once, and the socket opened to
    the address that was checked (the connection keeps the name for TLS)."""

    def __init__(self, policy: UrlPolicy, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._policy = policy
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._policy.admits_endpoint(host, port):
            return await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            async with asyncio.timeout(timeout):
                addresses = await checked_addresses(host, port, self._policy)
        except UrlRefused as err:
            raise httpcore.ConnectError(f"refused: {err}") from err
        except TimeoutError as err:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from err
        return await self._backend.connect_tcp(str(addresses[0]), port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refused: unix sockets are not a receiver")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with every connection made by `GuardedBackend`, and no proxy from the
    environment (a proxy would make the connection, and the check, somewhere else)."""

    def __init__(
        self, policy: UrlPolicy, *, limits: httpx.Limits = DEFAULT_LIMITS, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)  # built once, reused if passed in
        super().__init__(trust_env=False, limits=limits, verify=context)
        # httpx has no argument for httpcore's network backend: the pool is built again with it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(policy: UrlPolicy, *, timeout: float, limits: httpx.Limits = DEFAULT_LIMITS) -> httpx.AsyncClient:
    """An HTTP client for configured URLs: guarded connections, no redirects, no proxy from the environment."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, limits=limits), timeout=timeout, follow_redirects=False, trust_env=False
    )
