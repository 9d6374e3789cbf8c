"""Money in and money out: online orders and provider callbacks (WeChat Pay v3, Alipay, a
sandbox), cash at the counter, bank statement imports, the review queue, refunds and move-out
settlement. Money is credited only through `Billing.top_up` and debited only through
`store.post`, so the ledger's double-entry rules stay in one place (see `ledger_port`).

Errors: every error here is a `PaymentError` (a `BillingError`, so the app maps it to
problem+json in one place); `CallbackRejected` is a notification that failed verification.
"""

from shuidian_billing.billing import BillingError


class PaymentError(BillingError):
    """Root of the payment channels' errors."""


class CallbackRejected(PaymentError):
    """A provider notification that failed verification (forged, tampered, stale or malformed)."""

    status_code = 400
    code = "callback_rejected"
