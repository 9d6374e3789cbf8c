"""Provider notification adapters: verify a raw callback and turn it into a `Notification` (no I/O).

WeChat Pay API v3 and the sandbox share one scheme (signed headers, AEAD-encrypted resource);
Alipay signs its form parameters with RSA2. Each adapter checks, in this order: required fields,
freshness, signature, decryption, merchant identity (app id / mch id), then reads the amount
(WeChat in fen as an integer, Alipay in yuan as a decimal string) and the trade status.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric import rsa

from shuidian_billing.adapters.payments.signing import (
    SignatureError,
    aes_gcm_decrypt,
    alipay_content,
    rsa_sha256_verify,
    wechat_message,
)
from shuidian_billing.errors import CallbackRejected
from shuidian_shared.money import CENT

WECHAT_SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
WECHAT_PAID_STATES = frozenset({"SUCCESS"})
ALIPAY_PAID_STATES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
ALIPAY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ALIPAY_ZONE = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified provider notification about one order."""

    provider: str
    order_id: str
    provider_txn_id: str
    amount: Decimal
    paid: bool
    status: str


@dataclass(frozen=True, slots=True)
class RefundNotice:
    """A verified provider notification about one refund (WeChat Pay `REFUND.*`)."""

    provider: str
    order_id: str
    out_refund_no: str
    provider_refund_id: str
    refund: Decimal
    status: str  # SUCCESS, ABNORMAL or CLOSED


@dataclass(frozen=True, slots=True)
class WechatConfig:
    """What a WeChat-Pay-v3-style provider needs to verify its notifications."""

    provider: str
    app_id: str
    mch_id: str
    apiv3_key: bytes
    platform_key: rsa.RSAPublicKey
    platform_serial: str
    max_skew: timedelta
    # Platform certificates rotate: during a change-over the provider signs with either; by serial.
    other_platform_keys: Mapping[str, rsa.RSAPublicKey] = field(default_factory=dict)

    def key_for(self, serial: str) -> rsa.RSAPublicKey | None:
        """The platform key that signed with `serial` (None: not one we trust)."""
        if not self.platform_serial or serial == self.platform_serial:
            return self.platform_key
        return self.other_platform_keys.get(serial)


@dataclass(frozen=True, slots=True)
class AlipayConfig:
    app_id: str
    seller_id: str
    public_key: rsa.RSAPublicKey
    max_age: timedelta
    max_skew: timedelta


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name) or headers.get(name.lower())
    if not value:
        raise CallbackRejected(f"missing header {name}", code="callback_malformed")
    return value


def verify_wechat(
    config: WechatConfig, headers: Mapping[str, str], body: bytes, now: datetime
) -> Notification | RefundNotice:
    """Verify a WeChat Pay v3 (or sandbox) notification and decrypt the payment (or refund) it carries."""
    timestamp = _header(headers, "Wechatpay-Timestamp")
    nonce = _header(headers, "Wechatpay-Nonce")
    signature = _header(headers, "Wechatpay-Signature")
    serial = _header(headers, "Wechatpay-Serial")
    kind = headers.get("Wechatpay-Signature-Type") or headers.get("wechatpay-signature-type") or WECHAT_SIGNATURE_TYPE
    if kind != WECHAT_SIGNATURE_TYPE:
        raise CallbackRejected(f"unsupported signature type {kind}", code="callback_malformed")
    platform_key = config.key_for(serial)
    if platform_key is None:
        raise CallbackRejected("signed with an unknown platform certificate serial", code="callback_bad_signature")
    try:
        sent_at = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError) as err:
        raise CallbackRejected("timestamp is not a Unix time", code="callback_malformed") from err
    if abs(now - sent_at) > config.max_skew:
        raise CallbackRejected(f"timestamp {timestamp} is outside ±{config.max_skew}", code="callback_stale")
    try:
        rsa_sha256_verify(platform_key, wechat_message(timestamp, nonce, body), signature)
    except SignatureError as err:
        raise CallbackRejected(str(err), code="callback_bad_signature") from err
    envelope = _json_object(body)
    resource = envelope.get("resource")
    if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise CallbackRejected("resource is not AEAD_AES_256_GCM", code="callback_malformed")
    try:
        plaintext = aes_gcm_decrypt(
            config.apiv3_key,
            str(resource.get("nonce", "")),
            str(resource.get("associated_data", "")),
            str(resource.get("ciphertext", "")),
        )
    except SignatureError as err:
        raise CallbackRejected(str(err), code="callback_bad_signature") from err
    payment = _json_object(plaintext)
    if str(envelope.get("event_type", "")).startswith("REFUND."):
        return _wechat_refund(config, payment)
    if payment.get("mchid") != config.mch_id or payment.get("appid") != config.app_id:
        raise CallbackRejected("notification is for another merchant (mchid/appid)", code="callback_wrong_merchant")
    amount = payment.get("amount")
    if not isinstance(amount, dict) or type(amount.get("total")) is not int or amount["total"] <= 0:
        raise CallbackRejected("amount.total must be a positive integer of fen", code="callback_malformed")
    if amount.get("currency", "CNY") != "CNY":
        raise CallbackRejected("only CNY is accepted", code="callback_malformed")
    status = str(payment.get("trade_state", ""))
    return Notification(
        provider=config.provider,
        order_id=_text(payment, "out_trade_no"),
        provider_txn_id=_text(payment, "transaction_id"),
        amount=(Decimal(amount["total"]) / 100).quantize(CENT),
        paid=status in WECHAT_PAID_STATES,
        status=status,
    )


def _wechat_refund(config: WechatConfig, refund: dict[str, Any]) -> RefundNotice:
    # A refund notification names the merchant only (no appid).
    if refund.get("mchid") != config.mch_id:
        raise CallbackRejected("refund notification is for another merchant (mchid)", code="callback_wrong_merchant")
    amount = refund.get("amount")
    if not isinstance(amount, dict) or type(amount.get("refund")) is not int or amount["refund"] <= 0:
        raise CallbackRejected("amount.refund must be a positive integer of fen", code="callback_malformed")
    return RefundNotice(
        provider=config.provider,
        order_id=_text(refund, "out_trade_no"),
        out_refund_no=_text(refund, "out_refund_no"),
        provider_refund_id=_text(refund, "refund_id"),
        refund=(Decimal(amount["refund"]) / 100).quantize(CENT),
        status=_text(refund, "refund_status"),
    )


def parse_form(body: bytes) -> dict[str, str]:
    """Alipay's form body as a dict, decoded in the charset it declares; repeated names are refused."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as err:
        raise CallbackRejected("form body must be URL-encoded ASCII", code="callback_malformed") from err
    declared = dict(parse_qsl(text, keep_blank_values=True)).get("charset", "utf-8")
    try:
        codecs.lookup(declared)
        pairs = parse_qsl(text, keep_blank_values=True, encoding=declared, errors="strict", strict_parsing=bool(text))
    except (LookupError, UnicodeDecodeError, ValueError) as err:
        raise CallbackRejected(f"form body does not decode as {declared}", code="callback_malformed") from err
    form = dict(pairs)
    if len(form) != len(pairs):
        raise CallbackRejected("a parameter appears twice", code="callback_malformed")
    return form


def verify_alipay(config: AlipayConfig, body: bytes, now: datetime) -> Notification:
    """Verify an Alipay asynchronous notification (RSA2) and read the payment from it."""
    form = parse_form(body)
    if form.get("sign_type") != "RSA2":
        raise CallbackRejected("sign_type must be RSA2", code="callback_malformed")
    try:
        sent_at = datetime.strptime(form.get("notify_time", ""), ALIPAY_TIME_FORMAT).replace(tzinfo=ALIPAY_ZONE)
    except ValueError as err:
        raise CallbackRejected("notify_time missing or malformed", code="callback_malformed") from err
    if now - sent_at > config.max_age or sent_at - now > config.max_skew:
        raise CallbackRejected(f"notify_time {form['notify_time']} is too old or in the future", code="callback_stale")
    try:
        rsa_sha256_verify(config.public_key, alipay_content(form), form.get("sign", ""))
    except SignatureError as err:
        raise CallbackRejected(str(err), code="callback_bad_signature") from err
    if form.get("app_id") != config.app_id or (config.seller_id and form.get("seller_id") != config.seller_id):
        raise CallbackRejected(
            "notification is for another merchant (app_id/seller_id)", code="callback_wrong_merchant"
        )
    try:
        amount = Decimal(form.get("total_amount", ""))
    except InvalidOperation as err:
        raise CallbackRejected("total_amount is not a decimal amount of yuan", code="callback_malformed") from err
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(CENT):
        raise CallbackRejected(
            "total_amount must be positive yuan with at most two decimals", code="callback_malformed"
        )
    status = form.get("trade_status", "")
    return Notification(
        provider="alipay",
        order_id=_text(form, "out_trade_no"),
        provider_txn_id=_text(form, "trade_no"),
        amount=amount.quantize(CENT),
        paid=status in ALIPAY_PAID_STATES,
        status=status,
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CallbackRejected("body is not JSON", code="callback_malformed") from err
    if not isinstance(value, dict):
        raise CallbackRejected("body is not a JSON object", code="callback_malformed")
    return value


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise CallbackRejected(f"{name} missing or malformed", code="callback_malformed")
    return value
