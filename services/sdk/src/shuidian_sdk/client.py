"""`AsyncShuidianClient` and `ShuidianClient`: the same operations (see calls.py), async or blocking.

Sign in with a username and password (tenants, staff) or pass an integrator API key. With a
refresh token the client renews an expired access token once, transparently, and keeps the
rotated refresh token. Money and command POSTs get a fresh Idempotency-Key unless you pass your
own (pass your own when you retry after a timeout, so the retry cannot pay twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from shuidian_sdk import calls, models
from shuidian_sdk.calls import Call
from shuidian_sdk.errors import raise_for_problem
from shuidian_sdk.live import DEFAULT_RETRY_SECONDS, LiveEvent, parse_events

T = TypeVar("T")
USER_AGENT = "shuidian-sdk-python/0.1"


class _Session:
    """Credentials shared by both clients: an API key, or tokens that rotate on refresh."""

    def __init__(self, api_key: str | None, tokens: models.Tokens | None) -> None:
        self.api_key = api_key
        self.tokens = tokens

    def request(self, call: Call[Any]) -> dict[str, Any]:
        headers = dict(call.headers)
        token = self.api_key or (self.tokens.access_token if self.tokens else None)
        if call.authenticated and token:
            headers["Authorization"] = f"Bearer {token}"
        return {
            "method": call.method,
            "url": call.path,
            "params": call.params or None,
            "json": call.json,
            "data": call.data,
            "content": call.content,
            "headers": headers,
        }

    def should_refresh(self, call: Call[Any], response: httpx.Response) -> bool:
        return response.status_code == 401 and call.authenticated and self.api_key is None and self.tokens is not None


class AsyncShuidianClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tokens: models.Tokens | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers={"User-Agent": USER_AGENT}
        )
        self._session = _Session(api_key, tokens)

    async def __aenter__(self) -> AsyncShuidianClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def tokens(self) -> models.Tokens | None:
        return self._session.tokens

    async def run(self, call: Call[T]) -> T:
        """Send one operation (any from `shuidian_sdk.calls`) and parse its answer."""
        response = await self._http.request(**self._session.request(call))
        if self._session.should_refresh(call, response):
            assert self._session.tokens is not None
            renewal = calls.refresh(self._session.tokens.refresh_token)
            self._session.tokens = renewal.parse(await self._http.request(**self._session.request(renewal)))
            response = await self._http.request(**self._session.request(call))
        return call.parse(response)

    # sign-in
    async def login(self, username: str, password: str) -> models.Tokens:
        self._session.tokens = await self.run(calls.login(username, password))
        return self._session.tokens

    async def logout(self) -> None:
        if self._session.tokens:
            await self.run(calls.logout(self._session.tokens.refresh_token))
            self._session.tokens = None

    async def whoami(self) -> models.WhoAmI:
        return await self.run(calls.whoami())

    # tenant
    async def me(self) -> models.Me:
        return await self.run(calls.me())

    async def my_balances(self) -> list[models.Balance]:
        return await self.run(calls.my_balances())

    async def my_balance(self, account_id: str) -> models.Balance:
        return await self.run(calls.my_balance(account_id))

    async def my_meters(self) -> list[models.LiveMeter]:
        return await self.run(calls.my_meters())

    async def my_meter(self, meter_id: str) -> models.LiveMeter:
        return await self.run(calls.my_meter(meter_id))

    async def my_usage(
        self, account_id: str, granularity: str = "day", start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Any]:
        return await self.run(calls.my_usage(account_id, granularity, start, end))

    async def my_usage_today(self, account_id: str) -> dict[str, Any]:
        return await self.run(calls.my_usage_today(account_id))

    async def my_statement_file(self, account_id: str, month: str, format: str = "pdf") -> bytes:
        return await self.run(calls.my_statement_file(account_id, month, format))

    async def my_charge_explanation(self, account_id: str, txn_id: str) -> dict[str, Any]:
        return await self.run(calls.my_charge_explanation(account_id, txn_id))

    async def start_top_up(
        self, account_id: str, amount: Decimal, provider: str = "sandbox", idempotency_key: str | None = None
    ) -> models.PaymentOrder:
        return await self.run(calls.start_top_up(account_id, amount, provider, idempotency_key))

    async def my_payment(self, order_id: str) -> models.PaymentOrder:
        return await self.run(calls.my_payment(order_id))

    async def notification_settings(self) -> models.Versioned[models.NotificationSettings]:
        return await self.run(calls.notification_settings())

    async def live(
        self, *, last_event_id: str | None = None, reconnect: bool = True, idle_timeout: float = 60.0
    ) -> AsyncGenerator[LiveEvent, None]:
        """The signed-in tenant's live events (`ready`, `balance`, `meter_state`, `alarm`), for as long
        as you iterate. With `reconnect`, a dropped or ended stream is reopened after the server's
        `retry:` delay with `Last-Event-ID`; a connection silent for `idle_timeout` seconds (the
        gateway sends heartbeats) counts as dropped. Refusals raise the typed errors."""
        retry = DEFAULT_RETRY_SECONDS
        refreshed = False
        while True:
            headers = {"Accept": "text/event-stream"}
            token = self._session.api_key or (self._session.tokens.access_token if self._session.tokens else None)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            timeout = httpx.Timeout(self._http.timeout.connect, read=idle_timeout)
            try:
                async with self._http.stream("GET", "/v1/me/live", headers=headers, timeout=timeout) as response:
                    if (
                        response.status_code == 401
                        and not refreshed
                        and self._session.tokens
                        and not self._session.api_key
                    ):
                        refreshed = True  # one renewal per refusal, as for every other call
                        renewal = calls.refresh(self._session.tokens.refresh_token)
                        self._session.tokens = renewal.parse(await self._http.request(**self._session.request(renewal)))
                        continue
                    if response.status_code >= 400:
                        await response.aread()
                        raise_for_problem(response)
                    refreshed = False
                    async for event, retry_ms in parse_events(response.aiter_lines()):
                        if retry_ms is not None:
                            retry = retry_ms / 1000
                        if event is not None:
                            if event.id is not None:
                                last_event_id = event.id
                            yield event
            except httpx.TransportError:  # dropped, reset or silent past idle_timeout
                if not reconnect:
                    raise
            if not reconnect:
                return
            await asyncio.sleep(retry)

    async def set_notification_settings(
        self, settings: models.NotificationSettings, etag: str | None = None
    ) -> models.Versioned[models.NotificationSettings]:
        return await self.run(calls.set_notification_settings(settings, etag))

    # staff and integrators
    async def account(self, account_id: str) -> models.Versioned[models.Balance]:
        return await self.run(calls.account(account_id))

    async def counter_top_up(
        self,
        account_id: str,
        amount: Decimal,
        channel: str = "cash",
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return await self.run(calls.counter_top_up(account_id, amount, channel, reference, idempotency_key))

    async def issue_command(
        self, meter_id: str, kind: str, reason: str, idempotency_key: str | None = None
    ) -> models.CommandAccepted:
        return await self.run(calls.issue_command(meter_id, kind, reason, idempotency_key))

    async def command(self, command_id: str) -> dict[str, Any]:
        return await self.run(calls.command(command_id))

    async def iterate(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every item of a listing, page after page (`client.iterate("/v1/me/alarms")`)."""
        cursor: str | None = None
        while True:
            page = await self.run(calls.page(path, params, cursor))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def create_user(self, **body: Any) -> models.User:
        return await self.run(calls.create_user(body))

    async def create_api_key(self, name: str, scopes: list[str], estates: list[str] | None = None) -> models.ApiKey:
        return await self.run(calls.create_api_key(name, scopes, estates or ["*"]))

    async def revoke_api_key(self, key_id: str) -> models.ApiKey:
        return await self.run(calls.revoke_api_key(key_id))

    async def create_webhook(self, url: str, events: list[str]) -> models.Webhook:
        return await self.run(calls.create_webhook(url, events))

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.run(calls.delete_webhook(webhook_id))


class ShuidianClient:
    """The blocking twin of `AsyncShuidianClient` (same methods, same arguments)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tokens: models.Tokens | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers={"User-Agent": USER_AGENT}
        )
        self._session = _Session(api_key, tokens)

    def __enter__(self) -> ShuidianClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def tokens(self) -> models.Tokens | None:
        return self._session.tokens

    def run(self, call: Call[T]) -> T:
        response = self._http.request(**self._session.request(call))
        if self._session.should_refresh(call, response):
            assert self._session.tokens is not None
            renewal = calls.refresh(self._session.tokens.refresh_token)
            self._session.tokens = renewal.parse(self._http.request(**self._session.request(renewal)))
            response = self._http.request(**self._session.request(call))
        return call.parse(response)

    def login(self, username: str, password: str) -> models.Tokens:
        self._session.tokens = self.run(calls.login(username, password))
        return self._session.tokens

    def logout(self) -> None:
        if self._session.tokens:
            self.run(calls.logout(self._session.tokens.refresh_token))
            self._session.tokens = None

    def whoami(self) -> models.WhoAmI:
        return self.run(calls.whoami())

    def me(self) -> models.Me:
        return self.run(calls.me())

    def my_balances(self) -> list[models.Balance]:
        return self.run(calls.my_balances())

    def my_balance(self, account_id: str) -> models.Balance:
        return self.run(calls.my_balance(account_id))

    def my_meters(self) -> list[models.LiveMeter]:
        return self.run(calls.my_meters())

    def my_meter(self, meter_id: str) -> models.LiveMeter:
        return self.run(calls.my_meter(meter_id))

    def my_usage(
        self, account_id: str, granularity: str = "day", start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, Any]:
        return self.run(calls.my_usage(account_id, granularity, start, end))

    def my_usage_today(self, account_id: str) -> dict[str, Any]:
        return self.run(calls.my_usage_today(account_id))

    def my_statement_file(self, account_id: str, month: str, format: str = "pdf") -> bytes:
        return self.run(calls.my_statement_file(account_id, month, format))

    def my_charge_explanation(self, account_id: str, txn_id: str) -> dict[str, Any]:
        return self.run(calls.my_charge_explanation(account_id, txn_id))

    def start_top_up(
        self, account_id: str, amount: Decimal, provider: str = "sandbox", idempotency_key: str | None = None
    ) -> models.PaymentOrder:
        return self.run(calls.start_top_up(account_id, amount, provider, idempotency_key))

    def my_payment(self, order_id: str) -> models.PaymentOrder:
        return self.run(calls.my_payment(order_id))

    def notification_settings(self) -> models.Versioned[models.NotificationSettings]:
        return self.run(calls.notification_settings())

    def set_notification_settings(
        self, settings: models.NotificationSettings, etag: str | None = None
    ) -> models.Versioned[models.NotificationSettings]:
        return self.run(calls.set_notification_settings(settings, etag))

    def account(self, account_id: str) -> models.Versioned[models.Balance]:
        return self.run(calls.account(account_id))

    def counter_top_up(
        self,
        account_id: str,
        amount: Decimal,
        channel: str = "cash",
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return self.run(calls.counter_top_up(account_id, amount, channel, reference, idempotency_key))

    def issue_command(
        self, meter_id: str, kind: str, reason: str, idempotency_key: str | None = None
    ) -> models.CommandAccepted:
        return self.run(calls.issue_command(meter_id, kind, reason, idempotency_key))

    def command(self, command_id: str) -> dict[str, Any]:
        return self.run(calls.command(command_id))

    def iterate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = self.run(calls.page(path, params, cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def create_user(self, **body: Any) -> models.User:
        return self.run(calls.create_user(body))

    def create_api_key(self, name: str, scopes: list[str], estates: list[str] | None = None) -> models.ApiKey:
        return self.run(calls.create_api_key(name, scopes, estates or ["*"]))

    def revoke_api_key(self, key_id: str) -> models.ApiKey:
        return self.run(calls.revoke_api_key(key_id))

    def create_webhook(self, url: str, events: list[str]) -> models.Webhook:
        return self.run(calls.create_webhook(url, events))

    def delete_webhook(self, webhook_id: str) -> None:
        self.run(calls.delete_webhook(webhook_id))
