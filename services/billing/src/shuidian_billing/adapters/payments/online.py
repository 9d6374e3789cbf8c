"""Online payments: orders opened at the provider before the tenant pays, the provider notifications
that settle them — verified, logged (accepted or not), credited once per provider transaction id —
and the sweeper that asks the provider about orders whose notification never came and closes the
abandoned ones. A notification, a query result and a replay all go through `_settle`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import httpx
from prometheus_client import Counter
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port, reconciliation
from shuidian_billing.adapters.payments.clients import (
    AlipayClient,
    AlipayMerchant,
    OrderRequest,
    ProviderUnavailable,
    RefundRequest,
    TradeState,
    WechatMerchant,
    WechatPayClient,
)
from shuidian_billing.adapters.payments.problems import Problems
from shuidian_billing.adapters.payments.providers import (
    AlipayConfig,
    Notification,
    RefundNotice,
    WechatConfig,
    verify_alipay,
    verify_wechat,
)
from shuidian_billing.adapters.payments.sandbox import SANDBOX_API_BASE, SANDBOX_MERCHANT_SERIAL, Sandbox
from shuidian_billing.adapters.payments.signing import (
    SignatureError,
    load_platform_keys,
    load_private_key,
    load_public_key,
)
from shuidian_billing.adapters.payments.wechat_emulator import WechatPayEmulator
from shuidian_billing.domain import payment_orders
from shuidian_billing.errors import CallbackRejected, Conflict, NotFound, PaymentError
from shuidian_billing.settings import BillingSettings
from shuidian_shared.contracts.payments import PaymentProblemKind

log = logging.getLogger(__name__)

CALLBACKS = Counter("billing_payment_callbacks_total", "provider notifications received", ["provider", "outcome"])
SWEEPS = Counter(
    "billing_payment_sweeps_total", "open orders the sweeper asked the provider about", ["provider", "action"]
)
SWEEP_LOCK = "billing:order-sweeper"
PROVIDERS = ("wechat", "alipay", "sandbox")
MAX_NOTIFICATION_BYTES = 64 * 1024  # real notifications are a few kilobytes
# Headers worth keeping in the callback log (never cookies or authorisation).
_LOGGED_HEADERS = ("content-type", "wechatpay-timestamp", "wechatpay-nonce", "wechatpay-serial", "wechatpay-signature")


@dataclass(frozen=True, slots=True)
class Providers:
    """Verification settings of every configured provider (None = not configured)."""

    wechat: WechatConfig | None
    alipay: AlipayConfig | None
    sandbox: Sandbox | None
    sandbox_config: WechatConfig | None
    wechat_merchant: WechatMerchant | None = None
    alipay_merchant: AlipayMerchant | None = None
    # Per-estate merchants (BILLING_MERCHANTS): each named one with its own providers; estates → its name.
    # Estates not listed pay the default merchant (the flat settings above).
    merchants: Mapping[str, Providers] = field(default_factory=dict)
    estates: Mapping[str, str] = field(default_factory=dict)

    def config_of(self, provider: str) -> WechatConfig | AlipayConfig | None:
        return {"wechat": self.wechat, "alipay": self.alipay}.get(provider)

    def merchant(self, name: str) -> Providers:
        return self if name == DEFAULT_MERCHANT else self.merchants[name]

    def merchant_of(self, estate_id: str | None) -> str:
        return self.estates.get(estate_id or "", DEFAULT_MERCHANT)

    @classmethod
    def from_settings(cls, settings: BillingSettings) -> Providers:
        """Every key loaded and checked now, so a bad key fails the start rather than the first payment."""
        base = cls._one(settings)
        merchants: dict[str, Providers] = {}
        estates: dict[str, str] = {}
        for name, spec in _merchant_specs(settings.merchants).items():
            fields = {k: v for k, v in spec.items() if k != "estates"}
            unknown = set(fields) - _MERCHANT_FIELDS - _MERCHANT_ENDPOINTS
            if unknown:
                raise ValueError(f"BILLING_MERCHANTS[{name}]: unknown settings {sorted(unknown)}")
            update: dict[str, Any] = {k: _merchant_value(name, k, v) for k, v in fields.items()}
            update.update({k: SecretStr(str(v)) for k, v in update.items() if k in _SECRET_FIELDS})
            # A merchant names its own accounts only; endpoints and limits are the default's.
            cleared = {k: ("" if k not in _SECRET_FIELDS else SecretStr("")) for k in _MERCHANT_FIELDS}
            merchants[name] = cls._one(settings.model_copy(update={**cleared, **update, "sandbox_payments": False}))
            for estate in spec.get("estates", []):
                if estate in estates:
                    raise ValueError(f"BILLING_MERCHANTS: estate {estate} is served by {estates[estate]} and {name}")
                estates[str(estate)] = name
        return cls(
            base.wechat,
            base.alipay,
            base.sandbox,
            base.sandbox_config,
            base.wechat_merchant,
            base.alipay_merchant,
            merchants,
            estates,
        )

    @classmethod
    def _one(cls, settings: BillingSettings) -> Providers:
        skew = timedelta(seconds=settings.callback_max_skew_seconds)
        try:
            platform_keys, platform_serial = {}, settings.wechat_platform_serial
            if settings.wechat_app_id:
                platform_keys = load_platform_keys(settings.wechat_platform_public_key, platform_serial)
                # The configured serial is the current certificate; without one, the first given.
                platform_serial = platform_serial or next(iter(platform_keys))
                if platform_serial not in platform_keys:
                    raise SignatureError(f"no platform key or certificate has serial {platform_serial}")
            wechat = (
                WechatConfig(
                    provider="wechat",
                    app_id=settings.wechat_app_id,
                    mch_id=settings.wechat_mch_id,
                    apiv3_key=settings.wechat_apiv3_key.get_secret_value().encode(),
                    platform_key=platform_keys[platform_serial],
                    platform_serial=platform_serial,
                    max_skew=skew,
                    other_platform_keys={k: v for k, v in platform_keys.items() if k != platform_serial},
                )
                if settings.wechat_app_id
                else None
            )
            alipay = (
                AlipayConfig(
                    app_id=settings.alipay_app_id,
                    seller_id=settings.alipay_seller_id,
                    public_key=load_public_key(settings.alipay_public_key),
                    max_age=timedelta(seconds=settings.alipay_max_age_seconds),
                    max_skew=skew,
                )
                if settings.alipay_app_id
                else None
            )
        except SignatureError as err:
            raise ValueError(f"payment provider settings: {err}") from err
        if wechat is not None and len(wechat.apiv3_key) != 32:
            raise ValueError("BILLING_WECHAT_APIV3_KEY must be the 32-character APIv3 key")
        enabled = settings.sandbox_payments if settings.sandbox_payments is not None else settings.environment != "prod"
        sandbox = Sandbox.from_settings(settings) if enabled else None
        wechat_merchant = alipay_merchant = None
        try:
            wechat_key = _secret_text(settings.wechat_merchant_private_key.get_secret_value())
            if wechat is not None and wechat_key:
                if not settings.wechat_merchant_serial:
                    raise ValueError("BILLING_WECHAT_MERCHANT_SERIAL is required with the merchant key")
                wechat_merchant = WechatMerchant(
                    wechat,
                    load_private_key(wechat_key),
                    settings.wechat_merchant_serial,
                    settings.wechat_api_base,
                    settings.wechat_notify_url,
                )
            alipay_key = _secret_text(settings.alipay_app_private_key.get_secret_value())
            if alipay is not None and alipay_key:
                alipay_merchant = AlipayMerchant(
                    alipay, load_private_key(alipay_key), settings.alipay_gateway_url, settings.alipay_notify_url
                )
        except (SignatureError, ValueError, TypeError, OSError) as err:
            raise ValueError(f"payment provider settings: merchant key: {err}") from err
        return cls(wechat, alipay, sandbox, sandbox.config(skew) if sandbox else None, wechat_merchant, alipay_merchant)

    def verify(
        self, provider: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Notification | RefundNotice:
        return self.verify_merchant(provider, headers, body, now)[0]

    def verify_merchant(
        self, provider: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> tuple[Notification | RefundNotice, str]:
        """The verified notification and the merchant whose keys verified it (the default first; WeChat by the
        platform serial it names, Alipay by its app_id)."""
        candidates = [(DEFAULT_MERCHANT, self), *self.merchants.items()]
        if provider == "alipay":
            app_id = _form_app_id(body)
            candidates = [c for c in candidates if c[1].alipay is not None and c[1].alipay.app_id == app_id] or [
                (DEFAULT_MERCHANT, self)
            ]
        elif provider == "wechat":
            serial = headers.get("Wechatpay-Serial") or headers.get("wechatpay-serial") or ""
            candidates = [
                c for c in candidates if c[1].wechat is not None and c[1].wechat.key_for(serial) is not None
            ] or [(DEFAULT_MERCHANT, self)]
        first: CallbackRejected | None = None
        for name, merchant in candidates:
            try:
                return merchant._verify_own(provider, headers, body, now), name
            except CallbackRejected as err:
                first = first or err
        assert first is not None
        raise first

    def _verify_own(
        self, provider: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Notification | RefundNotice:
        if provider == "alipay" and self.alipay is not None:
            return verify_alipay(self.alipay, body, now)
        if provider == "wechat" and self.wechat is not None:
            return verify_wechat(self.wechat, headers, body, now)
        if provider == "sandbox" and self.sandbox_config is not None:
            return verify_wechat(self.sandbox_config, headers, body, now)
        raise NotFound(f"payment provider {provider} is not configured", code="provider_not_configured")


DEFAULT_MERCHANT = "default"
# What a merchant of BILLING_MERCHANTS may set: the flat settings that name a merchant's accounts and keys.
_MERCHANT_FIELDS = frozenset(
    {
        "wechat_app_id",
        "wechat_mch_id",
        "wechat_apiv3_key",
        "wechat_platform_public_key",
        "wechat_platform_serial",
        "wechat_merchant_private_key",
        "wechat_merchant_serial",
        "alipay_app_id",
        "alipay_seller_id",
        "alipay_public_key",
        "alipay_app_private_key",
    }
)
# Endpoints are the default's unless a merchant names its own (a provider's sandbox, an emulator).
_MERCHANT_ENDPOINTS = frozenset({"wechat_api_base", "alipay_gateway_url"})
_SECRET_FIELDS = frozenset({"wechat_apiv3_key", "wechat_merchant_private_key", "alipay_app_private_key"})


def _merchant_specs(text: str) -> dict[str, dict[str, Any]]:
    """BILLING_MERCHANTS: a JSON object (or the path of a mounted file holding it) of merchant name →
    {"estates": [...], <flat payment settings without the BILLING_ prefix>}."""
    text = _secret_text(text) if text.strip().startswith("/") else text
    if not text.strip():
        return {}
    try:
        specs = json.loads(text)
    except ValueError as err:
        raise ValueError(f"BILLING_MERCHANTS is not JSON: {err}") from err
    if not isinstance(specs, dict) or not all(isinstance(v, dict) for v in specs.values()):
        raise ValueError("BILLING_MERCHANTS must map merchant names to objects")
    for name, spec in specs.items():
        if name == DEFAULT_MERCHANT or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 32:
            raise ValueError(f"BILLING_MERCHANTS: {name!r} is not a merchant name (letters, digits, - _; not default)")
        if not isinstance(spec.get("estates", []), list):
            raise ValueError(f"BILLING_MERCHANTS[{name}].estates must be a list of estate ids")
    return specs


def _merchant_value(name: str, key: str, value: object) -> str:
    """A merchant's setting as given, from the environment (`env:NAME`) or from a mounted file (an absolute path)."""
    text = str(value).strip()
    if text.startswith("env:"):
        found = os.environ.get(text[4:])
        if not found:
            raise ValueError(f"BILLING_MERCHANTS[{name}].{key}: environment variable {text[4:]} is not set")
        return found
    if text.startswith("/") and "-----BEGIN" not in text:
        try:
            return Path(text).read_text().strip()
        except OSError as err:
            raise ValueError(f"BILLING_MERCHANTS[{name}].{key}: {err}") from err
    return text


def _form_app_id(body: bytes) -> str:
    try:
        return dict(parse_qsl(body.decode("ascii", "replace"))).get("app_id", "")
    except ValueError:
        return ""


def _secret_text(value: str) -> str:
    """A key given inline (PEM) or as the path of a mounted secret file holding it."""
    value = value.strip()
    if value and "-----BEGIN" not in value and value.startswith("/"):
        return Path(value).read_text()
    return value


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def new_order_id(now: datetime) -> str:
    """An out_trade_no both providers accept: 6–32 characters of letters and digits."""
    return f"SD{now.astimezone(UTC):%Y%m%d%H%M%S}{secrets.token_hex(5).upper()}"


def _order_out(row: Row[Any] | Mapping[str, Any]) -> dict[str, Any]:
    data = row._asdict() if isinstance(row, Row) else dict(row)
    keys = (
        "order_id",
        "provider",
        "method",
        "account_id",
        "amount",
        "status",
        "provider_txn_id",
        "payment_id",
        "created_at",
        "paid_at",
        "expires_at",
        "closed_at",
        "pay",
    )
    return {k: data[k] for k in keys}


class OnlinePayments:
    def __init__(
        self,
        engine: AsyncEngine,
        billing: Billing,
        providers: Providers,
        settings: BillingSettings | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._engine = engine
        self._billing = billing
        self.providers = providers
        self._settings = settings or BillingSettings()
        self.problems = Problems(billing.outbox, f"billing-{self._settings.instance_id}")
        self.clients: dict[str, WechatPayClient | AlipayClient] = {}
        if http is not None and providers.wechat_merchant is not None:
            self.clients["wechat"] = WechatPayClient(providers.wechat_merchant, http)
        if http is not None and providers.alipay_merchant is not None:
            self.clients["alipay"] = AlipayClient(providers.alipay_merchant, http)
        self.sandbox_emulator: WechatPayEmulator | None = None
        if providers.sandbox is not None and providers.sandbox_config is not None:
            # The sandbox is WeChat Pay v3 served in-process: the same client, signatures and checks.
            self.sandbox_emulator = providers.sandbox.emulator()
            merchant = WechatMerchant(
                providers.sandbox_config, providers.sandbox.private_key, SANDBOX_MERCHANT_SERIAL, SANDBOX_API_BASE, ""
            )
            transport = httpx.ASGITransport(app=self.sandbox_emulator.app())
            self.clients["sandbox"] = WechatPayClient(merchant, httpx.AsyncClient(transport=transport))
        # Each per-estate merchant's own clients; the default merchant's are `clients`.
        self.merchant_clients: dict[str, dict[str, WechatPayClient | AlipayClient]] = {DEFAULT_MERCHANT: self.clients}
        for name, other in providers.merchants.items():
            own: dict[str, WechatPayClient | AlipayClient] = {}
            if http is not None and other.wechat_merchant is not None:
                own["wechat"] = WechatPayClient(other.wechat_merchant, http)
            if http is not None and other.alipay_merchant is not None:
                own["alipay"] = AlipayClient(other.alipay_merchant, http)
            self.merchant_clients[name] = own
        self._providers_called = sorted({p for own in self.merchant_clients.values() for p in own})

    def client(self, provider: str, merchant: str) -> WechatPayClient | AlipayClient | None:
        """The client of `provider` under `merchant` (the sandbox is everyone's)."""
        if provider == "sandbox":
            return self.clients.get("sandbox")
        return self.merchant_clients.get(merchant, {}).get(provider)

    async def merchant_of_account(self, account_id: str) -> str:
        async with self._engine.connect() as conn:
            estate = (
                await conn.execute(
                    text("SELECT estate_id FROM billing.accounts WHERE account_id = :a"), {"a": account_id}
                )
            ).scalar()
        return self.providers.merchant_of(estate)

    async def methods(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """The providers an order can be opened at now (a verify-only provider is not one) and their methods: the
        ones of the merchant serving the account's estate when an account is named."""
        merchant = await self.merchant_of_account(account_id) if account_id else DEFAULT_MERCHANT
        return [
            {"provider": p, "methods": list(payment_orders.METHODS[p])}
            for p in PROVIDERS
            if self.client(p, merchant) is not None
        ]

    async def create_order(
        self,
        provider: str,
        account_id: str,
        amount: Decimal,
        key: str,
        *,
        method: str | None = None,
        openid: str = "",
        client_ip: str = "",
    ) -> dict[str, Any]:
        """An order to pay `amount` into `account_id` through `provider`, opened at the provider (what the
        payer's app needs is in `pay`); idempotent per key. If the provider cannot be reached the order
        stays open without `pay` (502): the same request again opens it."""
        if provider not in PROVIDERS:
            raise NotFound(f"unknown payment provider {provider}")
        method = payment_orders.payment_method(provider, method, openid=openid, client_ip=client_ip)
        fingerprint = _fingerprint(provider, account_id, amount, method)
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"order:{key}"})
            row = (
                await conn.execute(text("SELECT * FROM billing.payment_orders WHERE idempotency_key = :k"), {"k": key})
            ).first()
            replayed = row is not None
            if row is not None:
                if _fingerprint(row.provider, row.account_id, row.amount, row.method) != fingerprint:
                    raise Conflict("idempotency key already used for a different order", code="idempotency_conflict")
            else:
                account = (
                    await conn.execute(
                        text("SELECT estate_id FROM billing.accounts WHERE account_id = :a"), {"a": account_id}
                    )
                ).first()
                if account is None:
                    raise NotFound(f"no account {account_id}")
                # The merchant of the payer's estate opens, is asked about, closes and refunds this order.
                merchant = self.providers.merchant_of(account.estate_id)
                if provider != "sandbox" and self.providers.merchant(merchant).config_of(provider) is None:
                    raise NotFound(
                        f"{provider} is not configured for this estate's merchant", code="provider_not_configured"
                    )
                row = (
                    await conn.execute(
                        text(
                            "INSERT INTO billing.payment_orders (order_id, provider, method, account_id, amount, "
                            "idempotency_key, expires_at, payer, merchant) "
                            "VALUES (:o, :p, :meth, :a, :m, :k, :e, CAST(:payer AS jsonb), :merchant) RETURNING *"
                        ),
                        {
                            "o": new_order_id(now),
                            "p": provider,
                            "meth": method,
                            "a": account_id,
                            "m": amount,
                            "k": key,
                            "e": payment_orders.expires_at(now, self._settings.order_expiry_minutes),
                            "payer": json.dumps({"openid": openid, "client_ip": client_ip}),
                            "merchant": merchant,
                        },
                    )
                ).one()
        if row.pay is None and row.status == "open":
            row = await self._open_at_provider(row)
        return {**_order_out(row), "replayed": replayed}

    async def _open_at_provider(self, order: Row[Any]) -> Row[Any]:
        """Ask the provider for what the payer needs (prepay id, QR code, pay URL) and keep it on the order."""
        client = self.client(order.provider, order.merchant)
        if client is None:
            return order  # the provider is configured to verify notifications only (docs/payments.md)
        pay = await client.create(
            OrderRequest(
                order_id=order.order_id,
                amount=order.amount,
                description="水电费充值 · prepaid utilities top-up",
                expires_at=order.expires_at,
                method=order.method,
                openid=order.payer.get("openid", ""),
                client_ip=order.payer.get("client_ip", ""),
            )
        )
        async with self._engine.begin() as conn:
            return (
                await conn.execute(
                    text("UPDATE billing.payment_orders SET pay = CAST(:p AS jsonb) WHERE order_id = :o RETURNING *"),
                    {"p": json.dumps(pay), "o": order.order_id},
                )
            ).one()

    async def _order_row(self, order_id: str) -> Row[Any] | None:
        async with self._engine.connect() as conn:
            return (
                await conn.execute(text("SELECT * FROM billing.payment_orders WHERE order_id = :o"), {"o": order_id})
            ).first()

    async def order(self, order_id: str) -> dict[str, Any]:
        row = await self._order_row(order_id)
        if row is None:
            raise NotFound(f"no order {order_id}")
        return _order_out(row)

    async def notify(
        self, provider: str, headers: Mapping[str, str], body: bytes, remote: str | None, now: datetime
    ) -> dict[str, Any]:
        """Verify and apply one provider notification; every outcome lands in the callback log."""
        kept = {k: v for k, v in ((h, headers.get(h)) for h in _LOGGED_HEADERS) if v}
        entry: dict[str, Any] = {
            "provider": provider,
            "headers": kept,
            "body": body[:MAX_NOTIFICATION_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd"),
            "remote": remote,
        }
        try:
            if len(body) > MAX_NOTIFICATION_BYTES:
                raise CallbackRejected(f"body larger than {MAX_NOTIFICATION_BYTES} bytes", code="callback_malformed")
            note, merchant = self.providers.verify_merchant(provider, headers, body, now)
        except CallbackRejected as err:
            await self._log(entry, "rejected", f"{err.code}: {err.detail}")
            await self._burst(provider, now)
            raise
        if isinstance(note, RefundNotice):
            return await self._refund_notified(note, entry)
        return await self._settle(provider, note, entry, merchant)

    async def _burst(self, provider: str, now: datetime) -> None:
        """Many refused notifications from one provider in a window: someone is forging them (or our keys are
        wrong) — one `callback_forged` review item, and so one alarm, per window."""
        window = self._settings.forged_burst_window_seconds
        start = datetime.fromtimestamp(int(now.timestamp()) // window * window, UTC)
        async with self._engine.begin() as conn:
            refused = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM billing.callback_log WHERE provider = :p AND outcome = 'rejected' "
                        "AND received_at >= :s"
                    ),
                    {"p": provider, "s": start},
                )
            ).scalar_one()
            if refused < self._settings.forged_burst_threshold:
                return
            await self.problems.open(
                conn,
                review_kind="callback_forged",
                problem=PaymentProblemKind.FORGED_NOTIFICATIONS,
                provider=provider,
                subject=f"{provider}:forged:{start.isoformat(timespec='seconds')}",
                amount=None,
                reason=f"{refused} 条支付通知验签未通过（{window} 秒内）· {refused} notifications refused within "
                f"{window} s: forged, or our provider keys are wrong (see GET /v1/payments/callbacks?outcome=rejected)",
                detail={"refused": refused, "window_start": start.isoformat(), "window_seconds": window},
            )
        self.problems.published()

    async def _settle(
        self, provider: str, note: Notification, entry: dict[str, Any], merchant: str | None = None
    ) -> dict[str, Any]:
        """Credit a verified payment once (by provider transaction id) and mark its order paid — whether it
        came as a notification, a replay or the answer to the sweeper's query."""
        entry.update(order_id=note.order_id, provider_txn_id=note.provider_txn_id)
        if not note.paid:
            await self._log(entry, "ignored", f"trade status {note.status}")
            return {"outcome": "ignored", "order_id": note.order_id, "payment": None}
        order = await self._order_row(note.order_id)
        if order is None or order.provider != provider:
            await self._log(entry, "rejected", "callback_unknown_order: no such order for this provider")
            raise CallbackRejected(f"no {provider} order {note.order_id}", code="callback_unknown_order")
        if merchant is not None and provider != "sandbox" and merchant != order.merchant:
            await self._wrong_merchant(entry, note, order, merchant)
            raise CallbackRejected(
                f"merchant {merchant} does not serve the estate of order {note.order_id} ({order.merchant} does)",
                code="callback_wrong_merchant",
            )
        if note.amount != order.amount:
            await self._mismatch(entry, note, order)
            raise PaymentError(
                f"paid {note.amount} but order {note.order_id} is for {order.amount}; held for review",
                code="amount_mismatch",
                status_code=409,
            )
        if order.status == "paid" and order.provider_txn_id != note.provider_txn_id:
            await self._log(entry, "rejected", f"order already paid by {order.provider_txn_id}")
            raise Conflict(f"order {note.order_id} was already paid by another transaction", code="order_already_paid")
        try:
            payment = await ledger_port.credit(
                self._billing,
                account_id=order.account_id,
                amount=note.amount,
                channel=provider,
                reference=note.order_id,
                key=f"{provider}:{note.provider_txn_id}",
            )
        except Conflict:
            await self._log(entry, "rejected", "transaction id already credited for a different payment")
            raise
        outcome = "replayed" if payment["replayed"] else "accepted"
        entry["payment_id"] = payment["payment_id"]
        async with self._engine.begin() as conn:
            # A payment for an order we already closed or saw expire still counts: the money was taken.
            await conn.execute(
                text(
                    "UPDATE billing.payment_orders SET status = 'paid', provider_txn_id = :t, payment_id = :p, "
                    "paid_at = coalesce(paid_at, now()) WHERE order_id = :o AND status <> 'paid'"
                ),
                {"t": note.provider_txn_id, "p": payment["payment_id"], "o": note.order_id},
            )
            await self._log(entry, outcome, "", conn=conn)
        return {"outcome": outcome, "order_id": note.order_id, "payment": payment}

    # --- the sweeper ------------------------------------------------------------------------------

    async def sweep_loop(self) -> None:
        """Every `order_sweep_seconds`, ask the providers about open orders (one replica at a time)."""
        interval = self._settings.order_sweep_seconds
        if interval <= 0:
            await asyncio.Event().wait()  # turned off: idle, so the supervisor keeps one shape
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep(datetime.now(UTC))
                await self.reconcile_due(datetime.now(UTC))
            except Exception:
                log.exception("payment order sweep or reconciliation failed; will retry")

    # --- reconciliation (对账) ---------------------------------------------------------------------

    async def reconcile(self, provider: str, day: date) -> dict[str, Any]:
        """Reconcile `provider`'s bill of the local `day` with the ledger (again, if it ran before)."""
        client = self.clients.get(provider)
        if client is None:
            raise NotFound(f"payment provider {provider} is not configured to call", code="provider_not_configured")
        return await reconciliation.run(
            self._engine, client, provider, day, ZoneInfo(self._settings.timezone), self.problems
        )

    async def reconciliations(self, day: date | None, limit: int) -> list[dict[str, Any]]:
        return await reconciliation.reports(self._engine, day, limit)

    async def reconcile_due(self, now: datetime) -> None:
        """Yesterday's bills, once each, after 10:00 local time (when both providers have published them)."""
        local = now.astimezone(ZoneInfo(self._settings.timezone))
        if local.hour < 10:
            return
        yesterday = local.date() - timedelta(days=1)
        for provider in self.clients:
            if not await reconciliation.done(self._engine, provider, yesterday):
                await self.reconcile(provider, yesterday)

    async def sweep(self, now: datetime, *, limit: int = 200) -> dict[str, int] | None:
        """Ask the provider about every open order older than `order_query_after_seconds`: credit the paid
        ones through `_settle`, mark the ones the provider closed, close the expired ones at the provider.
        None when another replica holds the sweeper's lock."""
        async with self._engine.connect() as lock:
            got = (await lock.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": SWEEP_LOCK})).scalar()
            await lock.commit()
            if not got:
                return None
            try:
                rows = (
                    await lock.execute(
                        text(
                            "SELECT * FROM billing.payment_orders WHERE status = 'open' AND provider = ANY(:p) "
                            "AND created_at <= :c ORDER BY expires_at LIMIT :n"
                        ),
                        {
                            "p": self._providers_called,
                            "c": now - timedelta(seconds=self._settings.order_query_after_seconds),
                            "n": limit,
                        },
                    )
                ).all()
                pending = (
                    await lock.execute(
                        text(
                            "SELECT refund_id FROM billing.refunds WHERE provider_status = 'pending' "
                            "AND channel = ANY(:p) ORDER BY created_at LIMIT :n"
                        ),
                        {"p": self._providers_called, "n": limit},
                    )
                ).scalars()
                refunds = list(pending)
                processing = (
                    await lock.execute(
                        text(
                            "SELECT r.*, p.reference AS order_id, o.merchant FROM billing.refunds r "
                            "JOIN billing.payments p USING (payment_id) "
                            "JOIN billing.payment_orders o ON o.order_id = p.reference "
                            "WHERE r.provider_status = 'processing' AND r.channel = ANY(:p) "
                            "AND r.provider_updated_at <= :c ORDER BY r.provider_updated_at LIMIT :n"
                        ),
                        {
                            "p": sorted(
                                {
                                    p
                                    for own in self.merchant_clients.values()
                                    for p, c in own.items()
                                    if isinstance(c, WechatPayClient)
                                }
                            ),
                            "c": now - timedelta(seconds=self._settings.order_query_after_seconds),
                            "n": limit,
                        },
                    )
                ).all()
                await lock.commit()
                done: dict[str, int] = {}
                for order in rows:
                    action = await self._sweep_one(order, now)
                    done[action] = done.get(action, 0) + 1
                if refunds:
                    done["refunds_submitted"] = len(await self.submit_refunds(refunds))
                for refund in processing:
                    done["refunds_queried"] = done.get("refunds_queried", 0) + 1
                    await self._refund_query(refund)
                return done
            finally:
                await lock.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": SWEEP_LOCK})
                await lock.commit()

    async def _sweep_one(self, order: Row[Any], now: datetime) -> str:
        client = self.client(order.provider, order.merchant)
        assert client is not None  # the sweeper takes only orders of providers it calls
        try:
            state: TradeState = await client.query(order.order_id)
            action = payment_orders.sweep_action(paid=state.paid, dead=state.dead, expires=order.expires_at, now=now)
            if action is payment_orders.SweepAction.CREDIT and state.note is not None:
                entry = {
                    "provider": order.provider,
                    "headers": {},
                    "body": json.dumps({"query": state.status, "order_id": order.order_id}),
                    "remote": "query",
                }
                await self._settle(order.provider, state.note, entry)
            elif action is payment_orders.SweepAction.MARK_CLOSED:
                await self._finish(order.order_id, "closed")
            elif action is payment_orders.SweepAction.CLOSE:
                if state.found:
                    await client.close(order.order_id)
                await self._finish(order.order_id, "expired")
            else:
                await self._checked(order.order_id)
        except (ProviderUnavailable, PaymentError) as err:
            # Unreachable provider: ask again next round. Amount mismatch: already in the review queue.
            log.warning("sweeping %s order %s: %s", order.provider, order.order_id, err.detail)
            SWEEPS.labels(order.provider, "error").inc()
            await self._checked(order.order_id)
            return "error"
        SWEEPS.labels(order.provider, action.value).inc()
        return action.value

    # --- refunds through the provider --------------------------------------------------------------

    def refunds_at_provider(self, channel: str) -> bool:
        """Whether a refund of a payment that came in on `channel` must also go back through the provider."""
        return channel in self._providers_called

    async def submit_refunds(self, refund_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
        """Ask the provider to pay back each pending refund (numbered by its refund id, so a retry is the same
        refund there). Unreachable: stays pending for the sweeper; refused: failed and held for review."""
        results = []
        for refund_id in refund_ids:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT r.*, p.reference AS order_id, o.amount AS order_amount, o.merchant "
                            "FROM billing.refunds r "
                            "JOIN billing.payments p USING (payment_id) "
                            "JOIN billing.payment_orders o ON o.order_id = p.reference "
                            "WHERE r.refund_id = :r AND r.provider_status = 'pending'"
                        ),
                        {"r": refund_id},
                    )
                ).first()
            client = None if row is None else self.client(row.channel, row.merchant)
            if row is None or client is None:
                continue
            request = RefundRequest(
                order_id=row.order_id,
                out_refund_no=row.refund_id.hex,
                refund=row.amount,
                total=row.order_amount,
                reason=row.reason,
            )
            try:
                answer = await client.refund(request)
            except ProviderUnavailable as err:
                log.warning("refund %s not accepted by %s yet: %s", row.refund_id, row.channel, err.detail)
                continue
            await self._refund_state(
                row, answer.status, answer.provider_refund_id, f"provider answered {answer.status}"
            )
            results.append({"refund_id": row.refund_id, "provider_status": answer.status})
        return results

    async def _refund_query(self, refund: Row[Any]) -> None:
        """A refund still processing (its notification lost or late): ask WeChat Pay where it stands."""
        client = self.client(refund.channel, refund.merchant)
        if not isinstance(client, WechatPayClient):
            return
        try:
            answer = await client.refund_status(refund.refund_id.hex)
        except ProviderUnavailable as err:
            log.warning("refund %s: %s", refund.refund_id, err.detail)
            return
        if answer.status == "processing":
            async with self._engine.begin() as conn:
                await conn.execute(
                    text("UPDATE billing.refunds SET provider_updated_at = now() WHERE refund_id = :r"),
                    {"r": refund.refund_id},
                )
            return
        await self._refund_state(refund, answer.status, answer.provider_refund_id, f"refund query {answer.status}")

    async def _refund_notified(self, note: RefundNotice, entry: dict[str, Any]) -> dict[str, Any]:
        """A verified `REFUND.*` notification: the refund's final state, applied once."""
        entry.update(order_id=note.order_id, provider_txn_id=note.provider_refund_id)
        try:
            refund_id = uuid.UUID(hex=note.out_refund_no)
        except ValueError:
            refund_id = None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT r.*, p.reference AS order_id FROM billing.refunds r JOIN billing.payments p "
                        "USING (payment_id) WHERE r.refund_id = :r"
                    ),
                    {"r": refund_id},
                )
            ).first()
        if row is None or row.order_id != note.order_id or row.channel != note.provider:
            await self._log(entry, "rejected", "callback_unknown_order: no such refund for this order")
            raise CallbackRejected(
                f"no refund {note.out_refund_no} of order {note.order_id}", code="callback_unknown_order"
            )
        if row.amount != note.refund:
            await self._log(entry, "rejected", f"callback_malformed: refund {note.refund}, ours {row.amount}")
            raise CallbackRejected("refund amount differs from the refund we asked for", code="callback_malformed")
        final = row.provider_status in ("success", "failed")
        if not final:
            status = "success" if note.status == "SUCCESS" else "failed"
            await self._refund_state(row, status, note.provider_refund_id, f"refund notification {note.status}")
        outcome = "replayed" if final else "accepted"
        await self._log(entry, outcome, f"refund {note.status}")
        return {"outcome": outcome, "order_id": note.order_id, "payment": None}

    async def _refund_state(self, refund: Row[Any], status: str, provider_refund_id: str, why: str) -> None:
        async with self._engine.begin() as conn:
            changed = (
                await conn.execute(
                    text(
                        "UPDATE billing.refunds SET provider_status = :s, provider_refund_id = coalesce(:i, provider_refund_id), "
                        "provider_updated_at = now() WHERE refund_id = :r AND provider_status IN ('pending', 'processing') "
                        "RETURNING refund_id"
                    ),
                    {"s": status, "i": provider_refund_id or None, "r": refund.refund_id},
                )
            ).first()
            if changed is None or status != "failed":
                return
            # The ledger already paid the tenant back; the provider did not: someone must pay them another way.
            await self.problems.open(
                conn,
                review_kind="refund_failed",
                problem=PaymentProblemKind.REFUND_FAILED,
                provider=refund.channel,
                subject=f"{refund.channel}:refund:{refund.refund_id}",
                amount=refund.amount,
                reason=f"渠道退款失败，请线下退款 · the provider did not refund ({why})",
                detail={"refund_id": str(refund.refund_id), "order_id": refund.order_id},
                account_id=refund.account_id,
            )
        self.problems.published()
        log.warning("%s refused refund %s (%s): held for review", refund.channel, refund.refund_id, why)

    async def _finish(self, order_id: str, status: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE billing.payment_orders SET status = :s, closed_at = now(), checked_at = now() "
                    "WHERE order_id = :o AND status = 'open'"
                ),
                {"s": status, "o": order_id},
            )

    async def _checked(self, order_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text("UPDATE billing.payment_orders SET checked_at = now() WHERE order_id = :o"), {"o": order_id}
            )

    async def sandbox_pay(self, order_id: str) -> dict[str, Any]:
        """Play the payer at the sandbox provider: it marks the order paid and signs its notification,
        which is delivered through the same verification as any provider's."""
        emulator = self.sandbox_emulator
        if emulator is None:
            raise NotFound("the sandbox provider is disabled", code="provider_not_configured")
        order = await self._order_row(order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        if order.provider != "sandbox":
            raise PaymentError(f"order {order_id} is not a sandbox order", code="not_sandbox_order", status_code=422)
        if order_id not in emulator.orders:  # opened before this process (and its in-memory sandbox) started
            if order.status != "open":
                raise Conflict(f"order {order_id} is already {order.status}", code="order_not_open")
            await self._open_at_provider(order)
        headers, body = emulator.pay(order_id)
        return await self.notify("sandbox", headers, body, "sandbox", datetime.now(UTC))

    async def callbacks(self, outcome: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT callback_id, provider, outcome, reason, order_id, provider_txn_id, payment_id, remote, received_at "
                    "FROM billing.callback_log WHERE (CAST(:o AS text) IS NULL OR outcome = :o) "
                    "ORDER BY callback_id DESC LIMIT :n"
                ),
                {"o": outcome, "n": limit},
            )
            return [r._asdict() for r in rows]

    async def _wrong_merchant(self, entry: dict[str, Any], note: Notification, order: Row[Any], merchant: str) -> None:
        """A notification verified with merchant X's keys for an order of an estate merchant Y serves: refused
        (it would credit money X received to an account X does not serve), held for review and alarmed."""
        async with self._engine.begin() as conn:
            await self._log(
                entry, "rejected", f"callback_wrong_merchant: {merchant}, order's {order.merchant}", conn=conn
            )
            await self.problems.open(
                conn,
                review_kind="callback_wrong_merchant",
                problem=PaymentProblemKind.WRONG_MERCHANT,
                provider=note.provider,
                subject=f"{note.provider}:{note.provider_txn_id}",
                amount=note.amount,
                reason=f"商户 {merchant} 的支付通知对应由商户 {order.merchant} 收款的小区订单，已拒绝 · "
                f"merchant {merchant} notified a payment for an order of merchant {order.merchant}'s estate",
                detail={"order_id": order.order_id, "merchant": merchant, "order_merchant": order.merchant},
                account_id=order.account_id,
            )
        self.problems.published()

    async def _mismatch(self, entry: dict[str, Any], note: Notification, order: Row[Any]) -> None:
        async with self._engine.begin() as conn:
            await self._log(entry, "amount_mismatch", f"paid {note.amount}, order {order.amount}", conn=conn)
            await self.problems.open(
                conn,
                review_kind="callback_amount_mismatch",
                problem=PaymentProblemKind.AMOUNT_MISMATCH,
                provider=note.provider,
                subject=f"{note.provider}:{note.provider_txn_id}",
                amount=note.amount,
                reason=f"支付金额 {note.amount} 与订单金额 {order.amount} 不符 · paid amount differs from the order",
                detail={"order_id": order.order_id, "order_amount": str(order.amount)},
                account_id=order.account_id,
            )
        self.problems.published()
        log.warning(
            "%s callback for order %s paid %s, order is %s: held for review",
            note.provider,
            order.order_id,
            note.amount,
            order.amount,
        )

    async def _log(
        self, entry: dict[str, Any], outcome: str, reason: str, *, conn: AsyncConnection | None = None
    ) -> None:
        CALLBACKS.labels(entry["provider"], outcome).inc()
        if outcome == "rejected":
            log.warning("rejected %s callback from %s: %s", entry["provider"], entry.get("remote"), reason)
        params = {
            "p": entry["provider"],
            "o": outcome,
            "r": reason,
            "order": entry.get("order_id"),
            "t": entry.get("provider_txn_id"),
            "pay": entry.get("payment_id"),
            "h": json.dumps(entry["headers"]),
            "b": entry["body"],
            "remote": entry.get("remote"),
        }
        sql = text(
            "INSERT INTO billing.callback_log (provider, outcome, reason, order_id, provider_txn_id, payment_id, headers, body, remote) "
            "VALUES (:p, :o, :r, :order, :t, :pay, CAST(:h AS jsonb), :b, :remote)"
        )
        if conn is not None:
            await conn.execute(sql, params)
            return
        async with self._engine.begin() as own:
            await own.execute(sql, params)
