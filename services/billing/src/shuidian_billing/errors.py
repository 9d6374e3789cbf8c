"""Billing's one exception root (a `ShuidianError`, shuidian_shared.errors), mapped to problem+json in one place
(the kit's handler).

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

It imports only the shared contracts, so the pure domain raises the same root as the adapters.
"""

from __future__ import annotations

from typing import Any

from shuidian_shared.errors import ShuidianError


class BillingError(ShuidianError):
    """Root of every error billing raises; carries the HTTP answer it maps to."""

    status_code = 400
    code = "bad_request"


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

    def problem_body(self) -> dict[str, Any]:
        """The refused lines go with the answer."""
        return {**super().problem_body(), "errors": self.errors}
