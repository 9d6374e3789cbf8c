"""The sandbox payment provider: a WeChat Pay API v3 emulator with keys of its own, run in-process, so
the demo's orders, queries, refunds, notifications and bills take the same client and verification
code as the real providers. Never enabled in prod unless asked for."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa

from shuidian_billing.adapters.payments.providers import WECHAT_SIGNATURE_TYPE, WechatConfig
from shuidian_billing.adapters.payments.signing import (
    aes_gcm_encrypt,
    load_private_key,
    new_private_key,
    rsa_sha256_sign,
    wechat_message,
)
from shuidian_billing.adapters.payments.wechat_emulator import WechatPayEmulator
from shuidian_billing.settings import BillingSettings

SANDBOX_APP_ID = "sandbox-app"
SANDBOX_MCH_ID = "sandbox-mch"
SANDBOX_SERIAL = "SANDBOX-PLATFORM-1"
SANDBOX_MERCHANT_SERIAL = "SANDBOX-MERCHANT-1"
SANDBOX_API_BASE = "http://sandbox.invalid"  # served in-process, never resolved


def _token(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True, slots=True)
class Sandbox:
    """The sandbox platform's signing key and the merchant's APIv3 key it encrypts with."""

    private_key: rsa.RSAPrivateKey
    apiv3_key: bytes

    @classmethod
    def from_settings(cls, settings: BillingSettings) -> Sandbox:
        pem = settings.sandbox_private_key.get_secret_value()
        key = settings.sandbox_apiv3_key.get_secret_value()
        return cls(load_private_key(pem) if pem else new_private_key(), key.encode() if key else _token(32).encode())

    def config(self, max_skew: timedelta) -> WechatConfig:
        return WechatConfig(
            provider="sandbox",
            app_id=SANDBOX_APP_ID,
            mch_id=SANDBOX_MCH_ID,
            apiv3_key=self.apiv3_key,
            platform_key=self.private_key.public_key(),
            platform_serial=SANDBOX_SERIAL,
            max_skew=max_skew,
        )

    def emulator(self) -> WechatPayEmulator:
        """The sandbox platform: a WeChat Pay v3 emulator with the sandbox's keys (one key pair plays both
        the platform and the merchant), which billing calls in-process through the real client."""
        return WechatPayEmulator(
            app_id=SANDBOX_APP_ID,
            mch_id=SANDBOX_MCH_ID,
            merchant_public_key=self.private_key.public_key(),
            merchant_serial=SANDBOX_MERCHANT_SERIAL,
            apiv3_key=self.apiv3_key.decode(),
            platform_key=self.private_key,
            platform_serial=SANDBOX_SERIAL,
        )

    def notification(
        self, *, order_id: str, transaction_id: str, total_fen: int, now: datetime, trade_state: str = "SUCCESS"
    ) -> tuple[dict[str, str], bytes]:
        """A signed `TRANSACTION.SUCCESS` notification as the provider would POST it: (headers, body)."""
        payment = {
            "appid": SANDBOX_APP_ID,
            "mchid": SANDBOX_MCH_ID,
            "out_trade_no": order_id,
            "transaction_id": transaction_id,
            "trade_type": "NATIVE",
            "trade_state": trade_state,
            "success_time": now.isoformat(timespec="seconds"),
            "amount": {"total": total_fen, "payer_total": total_fen, "currency": "CNY", "payer_currency": "CNY"},
        }
        nonce, associated = _token(12), "transaction"
        body = json.dumps(
            {
                "id": _token(16),
                "create_time": now.isoformat(timespec="seconds"),
                "event_type": "TRANSACTION.SUCCESS",
                "resource_type": "encrypt-resource",
                "summary": "支付成功",
                "resource": {
                    "algorithm": "AEAD_AES_256_GCM",
                    "original_type": "transaction",
                    "associated_data": associated,
                    "nonce": nonce,
                    "ciphertext": aes_gcm_encrypt(self.apiv3_key, nonce, associated, json.dumps(payment).encode()),
                },
            },
            ensure_ascii=False,
        ).encode()
        timestamp, header_nonce = str(int(now.timestamp())), _token(32)
        headers = {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": header_nonce,
            "Wechatpay-Serial": SANDBOX_SERIAL,
            "Wechatpay-Signature-Type": WECHAT_SIGNATURE_TYPE,
            "Wechatpay-Signature": rsa_sha256_sign(self.private_key, wechat_message(timestamp, header_nonce, body)),
        }
        return headers, body
