"""Online payments: orders created before the tenant pays, and the provider notifications that
settle them — verified, logged (accepted or not), credited once per provider transaction id."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shuidian_billing.adapters.billing import Billing
from shuidian_billing.adapters.payments import ledger_port
from shuidian_billing.adapters.payments.providers import (
    AlipayConfig,
    Notification,
    WechatConfig,
    verify_alipay,
    verify_wechat,
)
from shuidian_billing.adapters.payments.sandbox import Sandbox
from shuidian_billing.adapters.payments.signing import SignatureError, load_public_key
from shuidian_billing.errors import CallbackRejected, Conflict, NotFound, PaymentError
from shuidian_billing.settings import BillingSettings

log = logging.getLogger(__name__)

CALLBACKS = Counter("billing_payment_callbacks_total", "provider notifications received", ["provider", "outcome"])
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

    @classmethod
    def from_settings(cls, settings: BillingSettings) -> Providers:
        skew = timedelta(seconds=settings.callback_max_skew_seconds)
        try:
            wechat = (
                WechatConfig(
                    provider="wechat",
                    app_id=settings.wechat_app_id,
                    mch_id=settings.wechat_mch_id,
                    apiv3_key=settings.wechat_apiv3_key.get_secret_value().encode(),
                    platform_key=load_public_key(settings.wechat_platform_public_key),
                    platform_serial=settings.wechat_platform_serial,
                    max_skew=skew,
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
        return cls(wechat, alipay, sandbox, sandbox.config(skew) if sandbox else None)

    def verify(self, provider: str, headers: Mapping[str, str], body: bytes, now: datetime) -> Notification:
        if provider == "alipay" and self.alipay is not None:
            return verify_alipay(self.alipay, body, now)
        if provider == "wechat" and self.wechat is not None:
            return verify_wechat(self.wechat, headers, body, now)
        if provider == "sandbox" and self.sandbox_config is not None:
            return verify_wechat(self.sandbox_config, headers, body, now)
        raise NotFound(f"payment provider {provider} is not configured", code="provider_not_configured")


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
        "account_id",
        "amount",
        "status",
        "provider_txn_id",
        "payment_id",
        "created_at",
        "paid_at",
    )
    return {k: data[k] for k in keys}


class OnlinePayments:
    def __init__(self, engine: AsyncEngine, billing: Billing, providers: Providers) -> None:
        self._engine = engine
        self._billing = billing
        self.providers = providers

    async def create_order(self, provider: str, account_id: str, amount: Decimal, key: str) -> dict[str, Any]:
        """An order to pay `amount` into `account_id` through `provider`; idempotent per key."""
        if provider not in PROVIDERS:
            raise NotFound(f"unknown payment provider {provider}")
        fingerprint = _fingerprint(provider, account_id, amount)
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"order:{key}"})
            existing = (
                await conn.execute(text("SELECT * FROM billing.payment_orders WHERE idempotency_key = :k"), {"k": key})
            ).first()
            if existing is not None:
                if _fingerprint(existing.provider, existing.account_id, existing.amount) != fingerprint:
                    raise Conflict("idempotency key already used for a different order", code="idempotency_conflict")
                return {**_order_out(existing), "replayed": True}
            if (
                await conn.execute(text("SELECT 1 FROM billing.accounts WHERE account_id = :a"), {"a": account_id})
            ).first() is None:
                raise NotFound(f"no account {account_id}")
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO billing.payment_orders (order_id, provider, account_id, amount, idempotency_key) "
                        "VALUES (:o, :p, :a, :m, :k) RETURNING *"
                    ),
                    {"o": new_order_id(datetime.now(UTC)), "p": provider, "a": account_id, "m": amount, "k": key},
                )
            ).one()
        return {**_order_out(row), "replayed": False}

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
            note = self.providers.verify(provider, headers, body, now)
        except CallbackRejected as err:
            await self._log(entry, "rejected", f"{err.code}: {err.detail}")
            raise
        entry.update(order_id=note.order_id, provider_txn_id=note.provider_txn_id)
        if not note.paid:
            await self._log(entry, "ignored", f"trade status {note.status}")
            return {"outcome": "ignored", "order_id": note.order_id, "payment": None}
        order = await self._order_row(note.order_id)
        if order is None or order.provider != provider:
            await self._log(entry, "rejected", "callback_unknown_order: no such order for this provider")
            raise CallbackRejected(f"no {provider} order {note.order_id}", code="callback_unknown_order")
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
            await conn.execute(
                text(
                    "UPDATE billing.payment_orders SET status = 'paid', provider_txn_id = :t, payment_id = :p, "
                    "paid_at = coalesce(paid_at, now()) WHERE order_id = :o AND status = 'open'"
                ),
                {"t": note.provider_txn_id, "p": payment["payment_id"], "o": note.order_id},
            )
            await self._log(entry, outcome, "", conn=conn)
        return {"outcome": outcome, "order_id": note.order_id, "payment": payment}

    async def sandbox_pay(self, order_id: str) -> dict[str, Any]:
        """Play the sandbox provider: sign a success notification for an open order and deliver it."""
        sandbox = self.providers.sandbox
        if sandbox is None:
            raise NotFound("the sandbox provider is disabled", code="provider_not_configured")
        order = await self.order(order_id)
        if order["provider"] != "sandbox":
            raise PaymentError(f"order {order_id} is not a sandbox order", code="not_sandbox_order", status_code=422)
        now = datetime.now(UTC)
        headers, body = sandbox.notification(
            order_id=order_id, transaction_id=f"SBX{order_id}", total_fen=int(order["amount"] * 100), now=now
        )
        return await self.notify("sandbox", headers, body, "sandbox", now)

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

    async def _mismatch(self, entry: dict[str, Any], note: Notification, order: Row[Any]) -> None:
        async with self._engine.begin() as conn:
            await self._log(entry, "amount_mismatch", f"paid {note.amount}, order {order.amount}", conn=conn)
            await conn.execute(
                text(
                    "INSERT INTO billing.payment_reviews (kind, subject, amount, reason, detail, account_id) "
                    "VALUES ('callback_amount_mismatch', :s, :m, :r, CAST(:d AS jsonb), :a) ON CONFLICT (kind, subject) DO NOTHING"
                ),
                {
                    "s": f"{note.provider}:{note.provider_txn_id}",
                    "m": note.amount,
                    "r": f"支付金额 {note.amount} 与订单金额 {order.amount} 不符 · paid amount differs from the order",
                    "d": json.dumps({"order_id": order.order_id, "order_amount": str(order.amount)}),
                    "a": order.account_id,
                },
            )
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
