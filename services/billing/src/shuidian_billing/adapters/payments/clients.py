"""Billing calling the payment providers: WeChat Pay API v3 (JSAPI, H5, Native orders; query; close)
and Alipay's open API (当面付 precreate, 手机网站支付 wap URL; query; close).

Every WeChat request is signed with the merchant key (`Authorization: WECHATPAY2-SHA256-RSA2048`)
and every answer's `Wechatpay-Signature` is checked with the platform key before it is read; every
Alipay request is an RSA2-signed form and every answer's `sign` is checked over the raw JSON text of
its `…_response` member. A provider that cannot be reached or refuses answers `ProviderUnavailable`
(502): the order stays open and the sweeper asks again later.

Hand-written over `cryptography` and httpx rather than an SDK: `wechatpayv3` and
`python-alipay-sdk` call the network synchronously (requests), and our verification code for
notifications already implements both schemes; the request side adds three small pure functions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from shuidian_billing.adapters.payments.providers import (
    ALIPAY_PAID_STATES,
    WECHAT_PAID_STATES,
    AlipayConfig,
    Notification,
    WechatConfig,
)
from shuidian_billing.adapters.payments.signing import (
    SignatureError,
    alipay_content,
    alipay_response_content,
    jsapi_pay_message,
    rsa_sha256_sign,
    rsa_sha256_verify,
    wechat_authorization,
    wechat_message,
    wechat_request_message,
)
from shuidian_billing.domain.payment_reconciliation import Kind, Line
from shuidian_billing.errors import PaymentError
from shuidian_shared.money import CENT

ALIPAY_ZONE = ZoneInfo("Asia/Shanghai")
WECHAT_METHODS = ("jsapi", "h5", "native")
ALIPAY_METHODS = ("precreate", "wap")
# Trade states after which an order can never be paid.
WECHAT_DEAD_STATES = frozenset({"CLOSED", "REVOKED", "PAYERROR"})
ALIPAY_DEAD_STATES = frozenset({"TRADE_CLOSED"})


class ProviderUnavailable(PaymentError):
    """The provider could not be reached, refused the request, or answered without a valid signature."""

    status_code = 502
    code = "provider_unavailable"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What a provider needs to open an order."""

    order_id: str
    amount: Decimal
    description: str
    expires_at: datetime
    method: str
    openid: str = ""  # JSAPI: the payer's openid under our app id
    client_ip: str = ""  # H5: the payer's IP address


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund of (part of) a paid order, numbered by us so a retry is the same refund at the provider."""

    order_id: str
    out_refund_no: str
    refund: Decimal
    total: Decimal  # the order's amount (WeChat wants both)
    reason: str


@dataclass(frozen=True, slots=True)
class RefundAnswer:
    status: str  # processing (a notification follows), success or failed
    provider_refund_id: str


@dataclass(frozen=True, slots=True)
class TradeState:
    """What the provider says about an order when asked (`found` False: it never saw it)."""

    found: bool
    status: str
    paid: bool
    dead: bool
    note: Notification | None  # a paid trade, read exactly like a notification


def _nonce() -> str:
    return secrets.token_hex(16)


def _fen(amount: Decimal) -> int:
    return int((amount * 100).to_integral_exact())


@dataclass(frozen=True, slots=True)
class WechatMerchant:
    """Our side of WeChat Pay: the merchant key and certificate serial, and where to call."""

    config: WechatConfig
    private_key: rsa.RSAPrivateKey
    serial: str
    api_base: str
    notify_url: str


class WechatPayClient:
    """WeChat Pay API v3 over one shared httpx client."""

    def __init__(self, merchant: WechatMerchant, http: httpx.AsyncClient) -> None:
        self.merchant = merchant
        self._http = http

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None, *, refusal_ok: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON) of one signed call; a 5xx, 401 or 429 — and a 4xx unless `refusal_ok` — raises."""
        m = self.merchant
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() if payload is not None else b""
        timestamp, nonce = str(int(datetime.now(UTC).timestamp())), _nonce()
        signature = rsa_sha256_sign(m.private_key, wechat_request_message(method, path, timestamp, nonce, body))
        headers = {
            "Authorization": wechat_authorization(m.config.mch_id, m.serial, nonce, timestamp, signature),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "shuidian-billing",
        }
        try:
            response = await self._http.request(method, m.api_base.rstrip("/") + path, content=body, headers=headers)
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"WeChat Pay unreachable: {err!r}") from err
        self._verify(response)
        data = response.json() if response.content else {}
        refused = refusal_ok and 400 <= response.status_code < 500 and response.status_code not in (401, 429)
        if response.status_code >= 400 and response.status_code != 404 and not refused:
            raise ProviderUnavailable(f"WeChat Pay refused {path}: {response.status_code} {data.get('code')}")
        return response.status_code, data

    def _verify(self, response: httpx.Response) -> None:
        """An answer counts only if the platform signed it (a man in the middle cannot fake a payment)."""
        h = response.headers
        cfg = self.merchant.config
        key = cfg.key_for(h.get("Wechatpay-Serial", ""))
        if key is None:
            raise ProviderUnavailable("WeChat Pay answer signed with an unknown platform serial")
        try:
            message = wechat_message(h.get("Wechatpay-Timestamp", ""), h.get("Wechatpay-Nonce", ""), response.content)
            rsa_sha256_verify(key, message, h.get("Wechatpay-Signature", ""))
        except SignatureError as err:
            raise ProviderUnavailable("WeChat Pay answer does not carry a valid platform signature") from err

    async def create(self, order: OrderRequest) -> dict[str, Any]:
        """Open the order; returns what the payer's front end needs (JSAPI package, h5_url or code_url)."""
        cfg = self.merchant.config
        payload: dict[str, Any] = {
            "appid": cfg.app_id,
            "mchid": cfg.mch_id,
            "description": order.description,
            "out_trade_no": order.order_id,
            "time_expire": order.expires_at.astimezone(ALIPAY_ZONE).isoformat(timespec="seconds"),
            "notify_url": self.merchant.notify_url,
            "amount": {"total": _fen(order.amount), "currency": "CNY"},
        }
        if order.method == "jsapi":
            payload["payer"] = {"openid": order.openid}
        elif order.method == "h5":
            payload["scene_info"] = {"payer_client_ip": order.client_ip, "h5_info": {"type": "Wap"}}
        _, data = await self._call("POST", f"/v3/pay/transactions/{order.method}", payload)
        if order.method == "native":
            return {"code_url": _required(data, "code_url")}
        if order.method == "h5":
            return {"h5_url": _required(data, "h5_url")}
        package = f"prepay_id={_required(data, 'prepay_id')}"
        timestamp, nonce = str(int(datetime.now(UTC).timestamp())), _nonce()
        pay_sign = rsa_sha256_sign(self.merchant.private_key, jsapi_pay_message(cfg.app_id, timestamp, nonce, package))
        return {
            "appId": cfg.app_id,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": pay_sign,
        }

    async def query(self, order_id: str) -> TradeState:
        status, data = await self._call(
            "GET", f"/v3/pay/transactions/out-trade-no/{quote(order_id)}?mchid={self.merchant.config.mch_id}", None
        )
        if status == 404:
            return TradeState(found=False, status="ORDER_NOT_EXIST", paid=False, dead=False, note=None)
        state = str(data.get("trade_state", ""))
        paid = state in WECHAT_PAID_STATES
        note = None
        if paid:
            cfg = self.merchant.config
            if data.get("mchid") != cfg.mch_id or data.get("appid") != cfg.app_id:
                raise ProviderUnavailable("WeChat Pay answered about another merchant's order")
            amount = data.get("amount") or {}
            total = amount.get("total") if isinstance(amount, dict) else None
            if type(total) is not int or total <= 0:
                raise ProviderUnavailable("WeChat Pay answer has no amount.total in fen")
            note = Notification(
                provider=cfg.provider,
                order_id=str(data.get("out_trade_no", "")),
                provider_txn_id=str(data.get("transaction_id", "")),
                amount=(Decimal(total) / 100).quantize(CENT),
                paid=True,
                status=state,
            )
        return TradeState(found=True, status=state, paid=paid, dead=state in WECHAT_DEAD_STATES, note=note)

    async def close(self, order_id: str) -> None:
        await self._call(
            "POST",
            f"/v3/pay/transactions/out-trade-no/{quote(order_id)}/close",
            {"mchid": self.merchant.config.mch_id},
        )

    async def bill(self, day: date) -> list[Line]:
        """The day's trade bill (交易账单, ALL): asked for, downloaded, its SHA1 checked, read line by line."""
        code, data = await self._call(
            "GET", f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL", None, refusal_ok=True
        )
        if code >= 400:
            if data.get("code") == "NO_STATEMENT_EXIST":
                return []  # no trade that day
            raise ProviderUnavailable(f"WeChat Pay bill for {day}: {data.get('code')}")
        url = _required(data, "download_url")
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        m = self.merchant
        timestamp, nonce = str(int(datetime.now(UTC).timestamp())), _nonce()
        signature = rsa_sha256_sign(m.private_key, wechat_request_message("GET", target, timestamp, nonce, b""))
        try:
            response = await self._http.get(
                url,
                headers={"Authorization": wechat_authorization(m.config.mch_id, m.serial, nonce, timestamp, signature)},
            )
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"WeChat Pay bill download failed: {err!r}") from err
        # The file itself is not signed: its hash came in the signed answer above.
        if (
            response.status_code != 200
            or hashlib.sha1(response.content).hexdigest() != str(data.get("hash_value", "")).lower()
        ):
            raise ProviderUnavailable(f"WeChat Pay bill for {day} did not download intact")
        return parse_wechat_bill(response.content)

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """POST /v3/refund/domestic/refunds; the outcome usually follows as a `REFUND.*` notification."""
        payload: dict[str, Any] = {
            "out_trade_no": request.order_id,
            "out_refund_no": request.out_refund_no,
            "reason": request.reason[:80],
            "amount": {"refund": _fen(request.refund), "total": _fen(request.total), "currency": "CNY"},
        }
        if self.merchant.notify_url:
            payload["notify_url"] = self.merchant.notify_url
        code, data = await self._call("POST", "/v3/refund/domestic/refunds", payload, refusal_ok=True)
        if code >= 400:
            return RefundAnswer("failed", str(data.get("code", code)))
        return _wechat_refund_answer(data)

    async def refund_status(self, out_refund_no: str) -> RefundAnswer:
        """Where a refund stands (for one whose notification has not come)."""
        code, data = await self._call("GET", f"/v3/refund/domestic/refunds/{quote(out_refund_no)}", None)
        if code == 404:
            raise ProviderUnavailable(f"WeChat Pay does not know refund {out_refund_no}")
        return _wechat_refund_answer(data)


@dataclass(frozen=True, slots=True)
class AlipayMerchant:
    config: AlipayConfig
    private_key: rsa.RSAPrivateKey
    gateway_url: str
    notify_url: str


class AlipayClient:
    """Alipay's open API (RSA2) over one shared httpx client."""

    def __init__(self, merchant: AlipayMerchant, http: httpx.AsyncClient) -> None:
        self.merchant = merchant
        self._http = http

    def signed_params(self, method: str, biz: dict[str, Any], *, notify: bool = False) -> dict[str, str]:
        """The public parameters of one call with `biz_content`, signed (RSA2 over the sorted parameters)."""
        params = {
            "app_id": self.merchant.config.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.now(ALIPAY_ZONE).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if notify and self.merchant.notify_url:
            params["notify_url"] = self.merchant.notify_url
        params["sign"] = rsa_sha256_sign(self.merchant.private_key, alipay_content(params))
        return params

    async def _call(self, method: str, biz: dict[str, Any], *, notify: bool = False) -> dict[str, Any]:
        params = self.signed_params(method, biz, notify=notify)
        try:
            response = await self._http.post(
                self.merchant.gateway_url,
                content=urlencode(params),
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
            )
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"Alipay unreachable: {err!r}") from err
        if response.status_code != 200:
            raise ProviderUnavailable(f"Alipay answered HTTP {response.status_code} to {method}")
        try:
            content, sign = alipay_response_content(response.text, method)
            rsa_sha256_verify(self.merchant.config.public_key, content, sign)
        except SignatureError as err:
            raise ProviderUnavailable(f"Alipay answer to {method} is not signed by Alipay: {err}") from err
        result: dict[str, Any] = json.loads(content)
        return result

    async def create(self, order: OrderRequest) -> dict[str, Any]:
        """当面付 precreate → the QR code to show; 手机网站支付 → the signed URL the phone opens."""
        biz = {
            "out_trade_no": order.order_id,
            "total_amount": str(order.amount.quantize(CENT)),
            "subject": order.description,
            "time_expire": order.expires_at.astimezone(ALIPAY_ZONE).strftime("%Y-%m-%d %H:%M:%S"),
        }
        if order.method == "wap":
            params = self.signed_params("alipay.trade.wap.pay", {**biz, "product_code": "QUICK_WAP_WAY"}, notify=True)
            return {"pay_url": f"{self.merchant.gateway_url}?{urlencode(params)}"}
        data = await self._call("alipay.trade.precreate", biz, notify=True)
        if data.get("code") != "10000":
            raise ProviderUnavailable(f"Alipay refused precreate: {data.get('sub_code') or data.get('code')}")
        return {"qr_code": _required(data, "qr_code")}

    async def query(self, order_id: str) -> TradeState:
        data = await self._call("alipay.trade.query", {"out_trade_no": order_id})
        if data.get("code") != "10000":
            if data.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return TradeState(found=False, status="TRADE_NOT_EXIST", paid=False, dead=False, note=None)
            raise ProviderUnavailable(f"Alipay refused query: {data.get('sub_code') or data.get('code')}")
        state = str(data.get("trade_status", ""))
        paid = state in ALIPAY_PAID_STATES
        note = None
        if paid:
            try:
                amount = Decimal(str(data.get("total_amount"))).quantize(CENT)
            except InvalidOperation as err:
                raise ProviderUnavailable("Alipay answer has no total_amount") from err
            note = Notification(
                provider="alipay",
                order_id=str(data.get("out_trade_no", "")),
                provider_txn_id=str(data.get("trade_no", "")),
                amount=amount,
                paid=True,
                status=state,
            )
        return TradeState(found=True, status=state, paid=paid, dead=state in ALIPAY_DEAD_STATES, note=note)

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """alipay.trade.refund answers at once; `fund_change` Y means the money moved now, and a repeat
        with the same out_request_no is the same refund (N, already moved)."""
        data = await self._call(
            "alipay.trade.refund",
            {
                "out_trade_no": request.order_id,
                "out_request_no": request.out_refund_no,
                "refund_amount": str(request.refund.quantize(CENT)),
                "refund_reason": request.reason[:256],
            },
        )
        if data.get("code") != "10000":
            if str(data.get("sub_code", "")).startswith("ACQ.SYSTEM_ERROR"):
                raise ProviderUnavailable("Alipay refund: system error, retry")
            return RefundAnswer("failed", str(data.get("sub_code") or data.get("code")))
        return RefundAnswer("success", str(data.get("trade_no", "")))

    async def bill(self, day: date) -> list[Line]:
        """The day's trade bill: its download URL asked for (signed), the zip fetched, the detail CSV read."""
        data = await self._call(
            "alipay.data.dataservice.bill.downloadurl.query", {"bill_type": "trade", "bill_date": day.isoformat()}
        )
        if data.get("code") != "10000":
            if data.get("sub_code") == "isp.bill_not_exist":
                return []
            raise ProviderUnavailable(f"Alipay bill for {day}: {data.get('sub_code') or data.get('code')}")
        try:
            response = await self._http.get(_required(data, "bill_download_url"))
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"Alipay bill download failed: {err!r}") from err
        if response.status_code != 200:
            raise ProviderUnavailable(f"Alipay bill download answered {response.status_code}")
        return parse_alipay_bill(response.content)

    async def close(self, order_id: str) -> None:
        data = await self._call("alipay.trade.close", {"out_trade_no": order_id})
        # A trade the payer never scanned does not exist at Alipay yet: nothing to close.
        if data.get("code") != "10000" and data.get("sub_code") != "ACQ.TRADE_NOT_EXIST":
            raise ProviderUnavailable(f"Alipay refused close: {data.get('sub_code') or data.get('code')}")


def _wechat_refund_answer(data: dict[str, Any]) -> RefundAnswer:
    state = {"SUCCESS": "success", "PROCESSING": "processing"}.get(str(data.get("status", "")), "failed")
    return RefundAnswer(state, str(data.get("refund_id", "")))


def _required(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ProviderUnavailable(f"provider answer has no {name}")
    return value


def parse_wechat_bill(raw: bytes) -> list[Line]:
    """WeChat Pay's trade bill (ALL): a header row, one row per trade or refund with every field prefixed by a
    backtick, then the totals. SUCCESS rows are payments (应结订单金额), REFUND rows refunds (退款金额)."""
    text = raw.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [name.strip() for name in rows[0]]
    lines = []
    for row in rows[1:]:
        if not row or not row[0].startswith("`"):
            break  # the totals section
        field = dict(zip(header, (value.strip().lstrip("`") for value in row), strict=False))
        state = field.get("交易状态", "")
        if state == "SUCCESS":
            lines.append(Line(Kind.PAYMENT, field["微信订单号"], field["商户订单号"], _yuan(field["应结订单金额"])))
        elif state == "REFUND" and field.get("退款状态") == "SUCCESS":
            lines.append(Line(Kind.REFUND, field["商户退款单号"], field["商户订单号"], _yuan(field["退款金额"])))
    return lines


def parse_alipay_bill(raw: bytes) -> list[Line]:
    """Alipay's trade bill: a zip holding, among others, the detail CSV (…业务明细.csv, GBK) whose comment
    lines start with #; 业务类型 交易 rows are payments, 退款 rows refunds (negative amounts)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        name = next(n for n in archive.namelist() if n.endswith("业务明细.csv"))
        text = archive.read(name).decode("gb18030")
    except (zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as err:
        raise ProviderUnavailable("Alipay bill is not the zip of a detail CSV") from err
    rows = [row for row in csv.reader(io.StringIO(text)) if row and not row[0].startswith("#")]
    if not rows:
        return []
    header = [name.strip() for name in rows[0]]
    lines = []
    for row in rows[1:]:
        field = dict(zip(header, (value.strip() for value in row), strict=False))
        kind = field.get("业务类型")
        if kind == "交易":
            lines.append(Line(Kind.PAYMENT, field["支付宝交易号"], field["商户订单号"], _yuan(field["订单金额（元）"])))
        elif kind == "退款":
            amount = abs(_yuan(field["订单金额（元）"]))
            lines.append(Line(Kind.REFUND, field["退款批次号/请求号"], field["商户订单号"], amount))
    return lines


def _yuan(text: str) -> Decimal:
    try:
        return Decimal(text).quantize(CENT)
    except InvalidOperation as err:
        raise ProviderUnavailable(f"bill amount {text!r} is not yuan") from err
