"""WeChat Pay API v3 emulator. It lives in billing, whose sandbox provider runs it in-process (so
`make run` pays through the same client code as the real provider); the tests serve it on a port."""

from shuidian_billing.adapters.payments.wechat_emulator import BILL_HEADER, WechatOrder, WechatPayEmulator, WechatRefund

__all__ = ["BILL_HEADER", "WechatOrder", "WechatPayEmulator", "WechatRefund"]
