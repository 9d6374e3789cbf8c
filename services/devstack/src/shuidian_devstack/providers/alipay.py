"""Alipay open API emulator (gateway.do): 当面付 precreate, wap pay page, query and close, RSA2-signed
answers over the raw JSON text of each `…_response` member, and RSA2-signed payment notifications."""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request, Response

ZONE = ZoneInfo("Asia/Shanghai")
TIME = "%Y-%m-%d %H:%M:%S"
BILL_HEADER = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
]


def content_of(params: dict[str, str]) -> bytes:
    """What Alipay's RSA2 covers: every parameter but sign and sign_type with a value, sorted, k=v&…"""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type") and v).encode()


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


@dataclass
class AlipayTrade:
    out_trade_no: str
    total_amount: str
    notify_url: str
    trade_status: str = "WAIT_BUYER_PAY"
    trade_no: str = ""
    scanned: bool = False  # a precreated trade exists at Alipay only once the payer scanned it
    paid_on: str = ""


@dataclass
class AlipayEmulator:
    app_id: str
    app_public_key: rsa.RSAPublicKey  # the merchant application's key, to verify our requests
    seller_id: str = "2088000000000001"
    alipay_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    trades: dict[str, AlipayTrade] = field(default_factory=dict)
    refunds: dict[str, tuple[str, str]] = field(default_factory=dict)  # out_request_no → (out_trade_no, amount)
    refunded_on: dict[str, str] = field(default_factory=dict)  # out_request_no → Beijing date
    bill_edit: Callable[[list[list[str]]], list[list[str]]] | None = None
    bills: dict[str, bytes] = field(default_factory=dict)
    refuse_refunds: bool = False  # answer refunds with a business failure (e.g. the merchant's balance is short)
    requests: list[str] = field(default_factory=list)  # methods of every verified request
    refused: list[str] = field(default_factory=list)

    def answer(self, method: str, member: dict[str, Any]) -> Response:
        text = json.dumps(member, ensure_ascii=False, separators=(",", ":"))
        name = method.replace(".", "_") + "_response"
        sign = _sign(self.alipay_key, text.encode())
        return Response(f'{{"{name}":{text},"sign":"{sign}"}}', media_type="application/json;charset=utf-8")

    def verify_request(self, params: dict[str, str]) -> str | None:
        if params.get("app_id") != self.app_id:
            return "app_id is not ours"
        if params.get("sign_type") != "RSA2":
            return "sign_type must be RSA2"
        try:
            self.app_public_key.verify(
                base64.b64decode(params.get("sign", "")), content_of(params), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return "sign does not verify"
        return None

    def pay(self, out_trade_no: str, *, total_amount: str | None = None, app_id: str | None = None) -> dict[str, str]:
        """The payer pays; the signed asynchronous notification form is returned to deliver."""
        trade = self.trades[out_trade_no]
        trade.scanned = True
        trade.trade_status = "TRADE_SUCCESS"
        trade.trade_no = trade.trade_no or f"2026{secrets.randbelow(10**24):024d}"
        trade.paid_on = datetime.now(ZONE).date().isoformat()
        if total_amount is not None:
            trade.total_amount = total_amount
        now = datetime.now(ZONE).strftime(TIME)
        params = {
            "notify_time": now,
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16),
            "charset": "utf-8",
            "version": "1.0",
            "app_id": app_id or self.app_id,
            "seller_id": self.seller_id,
            "trade_no": trade.trade_no,
            "out_trade_no": out_trade_no,
            "trade_status": trade.trade_status,
            "total_amount": trade.total_amount,
            "receipt_amount": trade.total_amount,
            "gmt_payment": now,
        }
        return {**params, "sign_type": "RSA2", "sign": _sign(self.alipay_key, content_of(params))}

    async def deliver(self, out_trade_no: str, **kwargs: Any) -> httpx.Response:
        form = self.pay(out_trade_no, **kwargs)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                self.trades[out_trade_no].notify_url,
                content=urlencode(form),
                headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            )

    def bill(self, bill_date: str) -> bytes:
        """The day's trade bill as Alipay serves it: a zip holding the GBK detail CSV with # comment lines."""
        rows: list[list[str]] = []
        for trade in self.trades.values():
            if trade.paid_on == bill_date:
                rows.append(self._bill_row(trade, "交易", trade.total_amount, ""))
        for request_no, (out_trade_no, amount) in self.refunds.items():
            if self.refunded_on.get(request_no) == bill_date:
                rows.append(self._bill_row(self.trades[out_trade_no], "退款", f"-{amount}", request_no))
        if self.bill_edit is not None:
            rows = self.bill_edit(rows)
        out = io.StringIO()
        out.write(f"#支付宝业务明细查询\r\n#账号：[{self.seller_id}]\r\n#起始日期：[{bill_date} 00:00:00]\r\n")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(BILL_HEADER)
        writer.writerows(rows)
        out.write("#-----------------------------------------业务明细列表结束------------------------------------\r\n")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            stem = f"{self.seller_id}0156_{bill_date.replace('-', '')}"
            zipped.writestr(f"{stem}_业务明细.csv", out.getvalue().encode("gbk"))
            zipped.writestr(f"{stem}_业务明细(汇总).csv", "#支付宝业务汇总查询\r\n".encode("gbk"))
        return archive.getvalue()

    @staticmethod
    def _bill_row(trade: AlipayTrade, kind: str, amount: str, request_no: str) -> list[str]:
        values = {
            "支付宝交易号": trade.trade_no,
            "商户订单号": trade.out_trade_no,
            "业务类型": kind,
            "商品名称": "水电费充值",
            "订单金额（元）": amount,
            "商家实收（元）": amount,
            "退款批次号/请求号": request_no,
            "服务费（元）": "0.00",
        }
        return [values.get(name, "") for name in BILL_HEADER]

    def wap_page(self, params: dict[str, str]) -> tuple[int, str]:
        """The phone opens the signed wap URL: the trade is created if the URL verifies."""
        why = self.verify_request(params)
        if why is not None:
            self.refused.append(why)
            return 400, why
        biz = json.loads(params["biz_content"])
        self.trades.setdefault(
            biz["out_trade_no"],
            AlipayTrade(biz["out_trade_no"], biz["total_amount"], params.get("notify_url", ""), scanned=True),
        )
        return 200, "收银台 · cashier"

    def app(self) -> FastAPI:
        app = FastAPI(title="Alipay open API emulator")

        @app.get("/gateway.do")
        async def page(request: Request) -> Response:
            status, text = self.wap_page(dict(request.query_params))
            return Response(text, status_code=status, media_type="text/plain; charset=utf-8")

        @app.get("/bill/{token}")
        async def download(token: str) -> Response:
            content = self.bills.pop(token, None)
            if content is None:
                return Response(status_code=404)
            return Response(content, media_type="application/zip")

        @app.post("/gateway.do")
        async def gateway(request: Request) -> Response:
            params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            method = params.get("method", "")
            why = self.verify_request(params)
            if why is not None:
                self.refused.append(why)
                return self.answer(
                    method, {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"}
                )
            self.requests.append(method)
            biz = json.loads(params.get("biz_content", "{}"))
            trade = self.trades.get(biz.get("out_trade_no", ""))
            missing = {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
            if method == "alipay.trade.precreate":
                out_trade_no = biz["out_trade_no"]
                self.trades[out_trade_no] = AlipayTrade(out_trade_no, biz["total_amount"], params.get("notify_url", ""))
                qr = f"https://qr.alipay.com/{secrets.token_urlsafe(9)}"
                return self.answer(
                    method, {"code": "10000", "msg": "Success", "out_trade_no": out_trade_no, "qr_code": qr}
                )
            if method == "alipay.trade.query":
                if trade is None or not trade.scanned:
                    return self.answer(method, missing)
                member = {
                    "code": "10000",
                    "msg": "Success",
                    "out_trade_no": trade.out_trade_no,
                    "trade_status": trade.trade_status,
                    "total_amount": trade.total_amount,
                }
                if trade.trade_no:
                    member["trade_no"] = trade.trade_no
                return self.answer(method, member)
            if method == "alipay.trade.close":
                if trade is None or not trade.scanned:
                    return self.answer(method, missing)
                if trade.trade_status == "TRADE_SUCCESS":
                    return self.answer(
                        method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR"}
                    )
                trade.trade_status = "TRADE_CLOSED"
                return self.answer(method, {"code": "10000", "msg": "Success", "out_trade_no": trade.out_trade_no})
            if method == "alipay.data.dataservice.bill.downloadurl.query":
                token = secrets.token_urlsafe(12)
                self.bills[token] = self.bill(biz["bill_date"])
                url = f"{str(request.base_url).rstrip('/')}/bill/{token}"
                return self.answer(method, {"code": "10000", "msg": "Success", "bill_download_url": url})
            if method == "alipay.trade.refund":
                if trade is None or trade.trade_status != "TRADE_SUCCESS":
                    return self.answer(method, missing)
                if self.refuse_refunds:
                    return self.answer(
                        method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.SELLER_BALANCE_NOT_ENOUGH"}
                    )
                request_no = biz["out_request_no"]
                change = "N" if request_no in self.refunds else "Y"  # a repeat is the same refund
                self.refunds.setdefault(request_no, (trade.out_trade_no, biz["refund_amount"]))
                self.refunded_on.setdefault(request_no, datetime.now(ZONE).date().isoformat())
                member = {
                    "code": "10000",
                    "msg": "Success",
                    "trade_no": trade.trade_no,
                    "out_trade_no": trade.out_trade_no,
                    "fund_change": change,
                    "refund_fee": biz["refund_amount"],
                }
                return self.answer(method, member)
            return self.answer(method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.UNKNOWN_METHOD"})

        return app
