"""Every API operation once, as a `Call`: what to send and how to read the answer. The async and
sync clients only differ in how they send it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from shuidian_sdk import models
from shuidian_sdk.errors import raise_for_problem

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    authenticated: bool = True


def _seg(value: str) -> str:
    """A path segment, escaped so an id cannot change the path."""
    return quote(value, safe="")


def _json(model: Any) -> Callable[[httpx.Response], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(model)

    def parse(response: httpx.Response) -> Any:
        raise_for_problem(response)
        return adapter.validate_python(response.json())

    return parse


def _versioned(model: Any) -> Callable[[httpx.Response], Any]:
    inner = _json(model)

    def parse(response: httpx.Response) -> Any:
        return models.Versioned[Any](value=inner(response), etag=response.headers.get("etag", ""))

    return parse


def _bytes(response: httpx.Response) -> bytes:
    raise_for_problem(response)
    return response.content


def _none(response: httpx.Response) -> None:
    raise_for_problem(response)


def _key(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def _query(**params: Any) -> dict[str, Any]:
    return {k.rstrip("_"): str(v) for k, v in params.items() if v is not None}


# -- sign-in ---------------------------------------------------------------------------------------
def login(username: str, password: str) -> Call[models.Tokens]:
    form = {"grant_type": "password", "username": username, "password": password}
    return Call("POST", "/v1/auth/token", _json(models.Tokens), data=form, authenticated=False)


def refresh(refresh_token: str) -> Call[models.Tokens]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return Call("POST", "/v1/auth/token", _json(models.Tokens), data=form, authenticated=False)


def logout(refresh_token: str) -> Call[None]:
    return Call("POST", "/v1/auth/revoke", _none, json={"refresh_token": refresh_token}, authenticated=False)


def whoami() -> Call[models.WhoAmI]:
    return Call("GET", "/v1/auth/me", _json(models.WhoAmI))


# -- tenant ----------------------------------------------------------------------------------------
def me() -> Call[models.Me]:
    return Call("GET", "/v1/me", _json(models.Me))


def my_balances() -> Call[list[models.Balance]]:
    return Call("GET", "/v1/me/accounts", _json(list[models.Balance]))


def my_balance(account_id: str) -> Call[models.Balance]:
    return Call("GET", f"/v1/me/accounts/{_seg(account_id)}", _json(models.Balance))


def my_meters() -> Call[list[models.LiveMeter]]:
    return Call("GET", "/v1/me/meters", _json(list[models.LiveMeter]))


def my_meter(meter_id: str) -> Call[models.LiveMeter]:
    return Call("GET", f"/v1/me/meters/{_seg(meter_id)}", _json(models.LiveMeter))


def my_usage(account_id: str, granularity: str, start: datetime | None, end: datetime | None) -> Call[dict[str, Any]]:
    params = _query(
        granularity=granularity, start=start.isoformat() if start else None, end=end.isoformat() if end else None
    )
    return Call("GET", f"/v1/me/accounts/{_seg(account_id)}/usage", _json(dict[str, Any]), params=params)


def my_usage_today(account_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/me/accounts/{_seg(account_id)}/usage/today", _json(dict[str, Any]))


def my_statement_file(account_id: str, month: str, format: str) -> Call[bytes]:
    path = f"/v1/me/accounts/{_seg(account_id)}/statements/{_seg(month)}"
    return Call("GET", path, _bytes, params={"format": format})


def my_charge_explanation(account_id: str, txn_id: str) -> Call[dict[str, Any]]:
    path = f"/v1/me/accounts/{_seg(account_id)}/transactions/{_seg(txn_id)}/explain"
    return Call("GET", path, _json(dict[str, Any]))


def start_top_up(
    account_id: str, amount: Decimal, provider: str, idempotency_key: str | None
) -> Call[models.PaymentOrder]:
    return Call(
        "POST",
        f"/v1/me/accounts/{_seg(account_id)}/topups",
        _json(models.PaymentOrder),
        json={"amount": str(amount), "provider": provider},
        headers=_key(idempotency_key),
    )


def my_payment(order_id: str) -> Call[models.PaymentOrder]:
    return Call("GET", f"/v1/me/payments/{_seg(order_id)}", _json(models.PaymentOrder))


def my_alarms(state: str | None, cursor: str | None) -> Call[models.Page[dict[str, Any]]]:
    return Call("GET", "/v1/me/alarms", _json(models.Page[dict[str, Any]]), params=_query(state=state, cursor=cursor))


def notification_settings() -> Call[models.Versioned[models.NotificationSettings]]:
    return Call("GET", "/v1/me/notification-settings", _versioned(models.NotificationSettings))


def set_notification_settings(
    settings: models.NotificationSettings, etag: str | None
) -> Call[models.Versioned[models.NotificationSettings]]:
    headers = {"If-Match": etag} if etag else {}
    body = settings.model_dump(mode="json")
    return Call(
        "PUT", "/v1/me/notification-settings", _versioned(models.NotificationSettings), json=body, headers=headers
    )


# -- staff and integrators -------------------------------------------------------------------------
def account(account_id: str) -> Call[models.Versioned[models.Balance]]:
    return Call("GET", f"/v1/accounts/{_seg(account_id)}", _versioned(models.Balance))


def counter_top_up(
    account_id: str, amount: Decimal, channel: str, reference: str | None, idempotency_key: str | None
) -> Call[dict[str, Any]]:
    body = {"amount": str(amount), "channel": channel, **({"reference": reference} if reference else {})}
    path = f"/v1/accounts/{_seg(account_id)}/topups"
    return Call("POST", path, _json(dict[str, Any]), json=body, headers=_key(idempotency_key))


def issue_command(meter_id: str, kind: str, reason: str, idempotency_key: str | None) -> Call[models.CommandAccepted]:
    body = {"meter_id": meter_id, "kind": kind, "reason": reason}
    return Call("POST", "/v1/commands", _json(models.CommandAccepted), json=body, headers=_key(idempotency_key))


def command(command_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/commands/{_seg(command_id)}", _json(dict[str, Any]))


def page(path: str, params: dict[str, Any], cursor: str | None) -> Call[models.Page[dict[str, Any]]]:
    """One page of any listing (`/v1/alarms`, `/v1/rooms`, …)."""
    return Call("GET", path, _json(models.Page[dict[str, Any]]), params={**_query(**params), **_query(cursor=cursor)})


def create_user(body: dict[str, Any]) -> Call[models.User]:
    return Call("POST", "/v1/users", _json(models.User), json=body)


def create_api_key(name: str, scopes: list[str], estates: list[str]) -> Call[models.ApiKey]:
    return Call("POST", "/v1/api-keys", _json(models.ApiKey), json={"name": name, "scopes": scopes, "estates": estates})


def revoke_api_key(key_id: str) -> Call[models.ApiKey]:
    return Call("DELETE", f"/v1/api-keys/{_seg(key_id)}", _json(models.ApiKey))


def create_webhook(url: str, events: list[str]) -> Call[models.Webhook]:
    return Call("POST", "/v1/webhooks", _json(models.Webhook), json={"url": url, "events": events})


def delete_webhook(webhook_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{_seg(webhook_id)}", _none)
