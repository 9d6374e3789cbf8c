"""Billing's one exception root, mapped to problem+json in one place (`app.py`).

    BillingError                      status_code, code and detail of the answer
     ├── NotFound                     404
     ├── Conflict                     409
     ├── BillingDomainError           422: a pure rule refused its input (domain/)
     │    └── UnbalancedPosting, NoTariffInEffect, …
     ├── PaymentError                 a payment channel's refusal (adapters/payments/)
     │    ├── CallbackRejected        a provider notification that failed verification
     │    └── StatementInvalid        a bank statement that cannot be read
     ├── ImportRefused                an estate CSV with errors (nothing imported)
     ├── StatementError, ListingError a statement's or a listing's request that cannot be answered
     └── …

It imports nothing, so the pure domain raises the same root as the adapters.
"""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    """Root of every error billing raises; carries the HTTP answer it maps to."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class NotFound(BillingError):
    status_code = 404
    code = "not_found"


class Conflict(BillingError):
    status_code = 409
    code = "conflict"


class BillingDomainError(BillingError, ValueError):
    """A pure rule refused its input (a `ValueError` too: each one means the input was wrong)."""

    status_code = 422
    code = "invalid_input"


class PaymentError(BillingError):
    """Root of the payment channels' errors."""


class CallbackRejected(PaymentError):
    """A provider notification that failed verification (forged, tampered, stale or malformed)."""

    status_code = 400
    code = "callback_rejected"


class ImportRefused(BillingError):
    """The CSV had errors; nothing was imported."""

    status_code = 422
    code = "import_refused"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} line(s) refused; nothing was imported")
        self.errors = errors
