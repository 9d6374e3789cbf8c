"""WeChat Pay API v3 emulator — the sandbox provider in dev (in-process), the tests' WeChat Pay (on a
port): JSAPI / H5 / Native orders, query and close, refunds and their notifications, the daily
trade bill, and signed, AES-256-GCM-encrypted notifications. It verifies the merchant's request
signatures and signs as the platform, with `cryptography` directly (not billing's signing code)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, Request, Response

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
BEIJING = ZoneInfo("Asia/Shanghai")
BILL_HEADER = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
]


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


@dataclass
class WechatOrder:
    out_trade_no: str
    appid: str
    mchid: str
    total: int
    trade_type: str
    notify_url: str
    trade_state: str = "NOTPAY"
    transaction_id: str = ""
    success_time: str = ""
    paid_on: str = ""  # local (Beijing) date of the payment: the bill it lands in
    payer: dict[str, str] = field(default_factory=dict)  # what the order named of the payer (openid, client ip)


@dataclass
class WechatRefund:
    out_refund_no: str
    out_trade_no: str
    refund: int
    total: int
    refund_id: str
    notify_url: str
    status: str = "PROCESSING"
    succeeded_on: str = ""


@dataclass
class WechatPayEmulator:
    """The platform: its signing key and serial, and the one merchant it serves."""

    app_id: str
    mch_id: str
    merchant_public_key: rsa.RSAPublicKey
    merchant_serial: str
    apiv3_key: str = field(default_factory=lambda: secrets.token_hex(16))
    platform_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    platform_serial: str = field(default_factory=lambda: secrets.token_hex(20).upper())
    orders: dict[str, WechatOrder] = field(default_factory=dict)
    refunds: dict[str, WechatRefund] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every verified request
    refused: list[str] = field(default_factory=list)  # why unsigned / badly signed requests were refused
    # The tests' hand on the daily bill: rows (without backticks) in, rows out — drop, add or alter lines.
    bill_edit: Callable[[list[list[str]]], list[list[str]]] | None = None
    bills: dict[str, bytes] = field(default_factory=dict)  # download token → bill file

    # --- answers -------------------------------------------------------------------------------

    def signed(self, status: int, payload: dict[str, Any] | None) -> Response:
        """An answer signed like the platform signs: over "timestamp\\nnonce\\nbody\\n"."""
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        headers = {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": self.platform_serial,
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
            "Wechatpay-Signature": _sign(self.platform_key, f"{timestamp}\n{nonce}\n".encode() + body + b"\n"),
            "Request-ID": secrets.token_hex(12),
        }
        return Response(body, status_code=status, headers=headers, media_type="application/json" if body else None)

    def error(self, status: int, code: str, message: str) -> Response:
        return self.signed(status, {"code": code, "message": message})

    def check_request(self, method: str, target: str, headers: Any, body: bytes) -> str | None:
        """Why a request is not the merchant's (None when its Authorization verifies)."""
        scheme, _, rest = (headers.get("authorization") or "").partition(" ")
        if scheme != SIGNATURE_TYPE:
            return "missing or unknown Authorization scheme"
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        fields = {k: v.strip('"') for k, v in fields.items()}
        if fields.get("mchid") != self.mch_id:
            return "mchid is not ours"
        if fields.get("serial_no") != self.merchant_serial:
            return "unknown merchant certificate serial"
        if abs(int(fields.get("timestamp", "0")) - time.time()) > 300:
            return "timestamp outside 5 minutes"
        message = f"{method}\n{target}\n{fields['timestamp']}\n{fields.get('nonce_str', '')}\n".encode() + body + b"\n"
        try:
            self.merchant_public_key.verify(
                base64.b64decode(fields.get("signature", "")), message, padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return "signature does not verify"
        return None

    # --- the platform's side of a payment ------------------------------------------------------

    def pay(self, out_trade_no: str, *, total: int | None = None) -> tuple[dict[str, str], bytes]:
        """The payer pays (optionally a different amount, as a hostile or broken world might say): the
        order turns SUCCESS and the signed notification is returned as (headers, body) to deliver."""
        order = self.orders[out_trade_no]
        order.trade_state = "SUCCESS"
        order.transaction_id = order.transaction_id or f"4200{secrets.randbelow(10**24):024d}"
        order.success_time = datetime.now(UTC).isoformat(timespec="seconds")
        order.paid_on = datetime.now(BEIJING).date().isoformat()
        if total is not None:
            order.total = total
        return self.notification(order)

    def notification(self, order: WechatOrder, *, apiv3_key: str | None = None) -> tuple[dict[str, str], bytes]:
        return self.signed_event("TRANSACTION.SUCCESS", "transaction", self.transaction(order), apiv3_key=apiv3_key)

    def refund_notification(self, out_refund_no: str, status: str = "SUCCESS") -> tuple[dict[str, str], bytes]:
        """The refund settles (or fails): its state changes and the signed `REFUND.*` notification is returned."""
        refund = self.refunds[out_refund_no]
        refund.status = status
        refund.succeeded_on = datetime.now(BEIJING).date().isoformat() if status == "SUCCESS" else ""
        resource = {
            "mchid": self.mch_id,
            "out_trade_no": refund.out_trade_no,
            "transaction_id": self.orders[refund.out_trade_no].transaction_id,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.refund_id,
            "refund_status": status,
            "success_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "user_received_account": "招商银行信用卡0403",
            "amount": {
                "total": refund.total,
                "refund": refund.refund,
                "payer_total": refund.total,
                "payer_refund": refund.refund,
            },
        }
        event = {"SUCCESS": "REFUND.SUCCESS", "ABNORMAL": "REFUND.ABNORMAL"}.get(status, "REFUND.CLOSED")
        return self.signed_event(event, "refund", resource)

    def signed_event(
        self, event_type: str, original_type: str, resource: dict[str, Any], *, apiv3_key: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """A notification as the platform POSTs it: resource AES-256-GCM encrypted, headers RSA-signed."""
        nonce = secrets.token_hex(6)
        key = (apiv3_key or self.apiv3_key).encode()
        ciphertext = AESGCM(key).encrypt(nonce.encode(), json.dumps(resource).encode(), original_type.encode())
        body = json.dumps(
            {
                "id": secrets.token_hex(16),
                "create_time": datetime.now(UTC).isoformat(timespec="seconds"),
                "resource_type": "encrypt-resource",
                "event_type": event_type,
                "summary": "支付成功" if original_type == "transaction" else "退款状态变更",
                "resource": {
                    "original_type": original_type,
                    "algorithm": "AEAD_AES_256_GCM",
                    "ciphertext": base64.b64encode(ciphertext).decode(),
                    "associated_data": original_type,
                    "nonce": nonce,
                },
            },
            ensure_ascii=False,
        ).encode()
        timestamp, header_nonce = str(int(time.time())), secrets.token_hex(16)
        headers = {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": header_nonce,
            "Wechatpay-Serial": self.platform_serial,
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
            "Wechatpay-Signature": _sign(self.platform_key, f"{timestamp}\n{header_nonce}\n".encode() + body + b"\n"),
        }
        return headers, body

    def transaction(self, order: WechatOrder) -> dict[str, Any]:
        data: dict[str, Any] = {
            "appid": order.appid,
            "mchid": order.mchid,
            "out_trade_no": order.out_trade_no,
            "trade_type": order.trade_type,
            "trade_state": order.trade_state,
            "trade_state_desc": {"SUCCESS": "支付成功", "NOTPAY": "未支付", "CLOSED": "已关闭"}.get(
                order.trade_state, ""
            ),
            "amount": {"total": order.total, "currency": "CNY"},
        }
        if order.trade_state == "SUCCESS":
            data |= {
                "transaction_id": order.transaction_id,
                "success_time": order.success_time,
                "bank_type": "OTHERS",
                "payer": {"openid": "o-emulated-payer"},
                "amount": {
                    "total": order.total,
                    "payer_total": order.total,
                    "currency": "CNY",
                    "payer_currency": "CNY",
                },
            }
        return data

    async def deliver(self, out_trade_no: str, *, total: int | None = None) -> httpx.Response:
        """Pay and POST the notification to the order's notify_url, as the platform does."""
        headers, body = self.pay(out_trade_no, total=total)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(self.orders[out_trade_no].notify_url, content=body, headers=headers)

    # --- the API ---------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI(title="WeChat Pay API v3 emulator")

        async def verified(request: Request) -> tuple[bytes, Response | None]:
            body = await request.body()
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            why = self.check_request(request.method, target, request.headers, body)
            if why is not None:
                self.refused.append(why)
                return body, self.error(401, "SIGN_ERROR", why)
            self.requests.append((request.method, request.url.path))
            return body, None

        @app.post("/v3/pay/transactions/{trade_type}")
        async def create(trade_type: str, request: Request) -> Response:
            body, refused = await verified(request)
            if refused is not None:
                return refused
            if trade_type not in ("jsapi", "h5", "native"):
                return self.error(404, "NOT_FOUND", "unknown trade type")
            data = json.loads(body)
            if data.get("mchid") != self.mch_id or data.get("appid") != self.app_id:
                return self.error(400, "MCH_NOT_EXISTS", "appid/mchid do not match")
            if trade_type == "jsapi" and not (data.get("payer") or {}).get("openid"):
                return self.error(400, "PARAM_ERROR", "payer.openid is required")
            if trade_type == "h5" and not (data.get("scene_info") or {}).get("payer_client_ip"):
                return self.error(400, "PARAM_ERROR", "scene_info.payer_client_ip is required")
            out_trade_no = data["out_trade_no"]
            existing = self.orders.get(out_trade_no)
            if existing is not None and existing.trade_state != "NOTPAY":
                return self.error(400, "ORDERPAID" if existing.trade_state == "SUCCESS" else "ORDERCLOSED", "order")
            self.orders[out_trade_no] = WechatOrder(
                out_trade_no,
                data["appid"],
                data["mchid"],
                data["amount"]["total"],
                trade_type.upper(),
                data["notify_url"],
                payer={
                    k: v
                    for k, v in (
                        ("openid", (data.get("payer") or {}).get("openid")),
                        ("client_ip", (data.get("scene_info") or {}).get("payer_client_ip")),
                    )
                    if v
                },
            )
            prepay = f"wx{secrets.token_hex(14)}"
            if trade_type == "native":
                return self.signed(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(6)}"})
            if trade_type == "h5":
                return self.signed(
                    200, {"h5_url": f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay}"}
                )
            return self.signed(200, {"prepay_id": prepay})

        async def known(out_trade_no: str, request: Request) -> WechatOrder | Response:
            """The order a verified request names, or the answer refusing the request."""
            _, refused = await verified(request)
            if refused is not None:
                return refused
            order = self.orders.get(out_trade_no)
            return order if order is not None else self.error(404, "ORDER_NOT_EXIST", "订单不存在")

        @app.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
        async def query(out_trade_no: str, request: Request) -> Response:
            order = await known(out_trade_no, request)
            return order if isinstance(order, Response) else self.signed(200, self.transaction(order))

        @app.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close")
        async def close(out_trade_no: str, request: Request) -> Response:
            order = await known(out_trade_no, request)
            if isinstance(order, Response):
                return order
            if order.trade_state == "SUCCESS":
                return self.error(400, "ORDERPAID", "订单已支付")
            order.trade_state = "CLOSED"
            return self.signed(204, None)

        @app.get("/v3/bill/tradebill")
        async def tradebill(bill_date: str, request: Request) -> Response:
            _, refused = await verified(request)
            if refused is not None:
                return refused
            content = self.bill(bill_date)
            token = secrets.token_urlsafe(12)
            self.bills[token] = content
            return self.signed(
                200,
                {
                    "hash_type": "SHA1",
                    "hash_value": hashlib.sha1(content).hexdigest(),
                    "download_url": f"{str(request.base_url).rstrip('/')}/v3/billdownload/file?token={token}",
                },
            )

        @app.get("/v3/billdownload/file")
        async def download(token: str, request: Request) -> Response:
            _, refused = await verified(request)
            if refused is not None:
                return refused
            content = self.bills.pop(token, None)
            if content is None:
                return self.error(404, "NOT_FOUND", "no such bill")
            return Response(content, media_type="text/csv; charset=utf-8")

        @app.post("/v3/refund/domestic/refunds")
        async def refund(request: Request) -> Response:
            body, refused = await verified(request)
            if refused is not None:
                return refused
            data = json.loads(body)
            existing = self.refunds.get(data["out_refund_no"])
            if existing is not None:  # the same out_refund_no is the same refund
                return self.signed(200, self.refund_answer(existing))
            order = self.orders.get(data.get("out_trade_no", ""))
            if order is None or order.trade_state != "SUCCESS":
                return self.error(404, "RESOURCE_NOT_EXISTS", "订单不存在或未支付")
            amount = data["amount"]
            already = sum(r.refund for r in self.refunds.values() if r.out_trade_no == order.out_trade_no)
            if amount["total"] != order.total or already + amount["refund"] > order.total:
                return self.error(400, "INVALID_REQUEST", "退款金额超过订单可退金额")
            record = WechatRefund(
                data["out_refund_no"],
                order.out_trade_no,
                amount["refund"],
                amount["total"],
                f"5030{secrets.randbelow(10**24):024d}",
                data.get("notify_url", ""),
            )
            self.refunds[record.out_refund_no] = record
            return self.signed(200, self.refund_answer(record))

        @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
        async def refund_status(out_refund_no: str, request: Request) -> Response:
            _, refused = await verified(request)
            if refused is not None:
                return refused
            found = self.refunds.get(out_refund_no)
            if found is None:
                return self.error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return self.signed(200, self.refund_answer(found))

        return app

    def bill(self, bill_date: str) -> bytes:
        """The trade bill (ALL) of one Beijing day, as WeChat Pay serves it: backtick-prefixed CSV and totals."""
        rows: list[list[str]] = []
        for order in self.orders.values():
            if order.paid_on == bill_date:
                yuan = f"{order.total / 100:.2f}"
                rows.append(self._bill_row(order, "SUCCESS", yuan, "", "", "0.00", "", yuan))
        for refund in self.refunds.values():
            if refund.status == "SUCCESS" and refund.succeeded_on == bill_date:
                order = self.orders[refund.out_trade_no]
                yuan = f"{refund.refund / 100:.2f}"
                rows.append(
                    self._bill_row(
                        order, "REFUND", "0.00", refund.refund_id, refund.out_refund_no, yuan, "SUCCESS", "0.00"
                    )
                )
        if self.bill_edit is not None:
            rows = self.bill_edit(rows)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(BILL_HEADER)
        writer.writerows([[f"`{value}" for value in row] for row in rows])
        writer.writerow(
            [
                "总交易单数",
                "应结订单总金额",
                "退款总金额",
                "充值券退款总金额",
                "手续费总金额",
                "订单总金额",
                "申请退款总金额",
            ]
        )
        writer.writerow([f"`{len(rows)}", "`0.00", "`0.00", "`0.00", "`0.00", "`0.00", "`0.00"])
        return out.getvalue().encode("utf-8")

    def _bill_row(
        self,
        order: WechatOrder,
        state: str,
        settled: str,
        refund_id: str,
        out_refund_no: str,
        refund: str,
        refund_state: str,
        total: str,
    ) -> list[str]:
        values = {
            "交易时间": order.success_time.replace("T", " ")[:19],
            "公众账号ID": order.appid,
            "商户号": order.mchid,
            "微信订单号": order.transaction_id,
            "商户订单号": order.out_trade_no,
            "用户标识": "o-emulated-payer",
            "交易类型": order.trade_type,
            "交易状态": state,
            "付款银行": "OTHERS",
            "货币种类": "CNY",
            "应结订单金额": settled,
            "代金券金额": "0.00",
            "微信退款单号": refund_id,
            "商户退款单号": out_refund_no,
            "退款金额": refund,
            "充值券退款金额": "0.00",
            "退款类型": "ORIGINAL" if refund_id else "",
            "退款状态": refund_state,
            "商品名称": "水电费充值",
            "手续费": "0.00",
            "费率": "0.60%",
            "订单金额": total,
            "申请退款金额": refund,
        }
        return [values.get(name, "") for name in BILL_HEADER]

    def refund_answer(self, refund: WechatRefund) -> dict[str, Any]:
        return {
            "refund_id": refund.refund_id,
            "out_refund_no": refund.out_refund_no,
            "out_trade_no": refund.out_trade_no,
            "channel": "ORIGINAL",
            "status": refund.status,
            "amount": {"refund": refund.refund, "total": refund.total, "currency": "CNY"},
        }
