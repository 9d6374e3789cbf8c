"""Money in and money out: online orders and provider callbacks (WeChat Pay v3, Alipay, a
sandbox), cash at the counter, bank statement imports, the review queue, refunds and move-out
settlement. Money is credited only through `Credits.top_up` and debited only through the
domain's refund posting, so the ledger's double-entry rules stay in one place (see `ledger_port`).

Errors: every error here is a `PaymentError` (see `shuidian_billing.errors`).
"""
