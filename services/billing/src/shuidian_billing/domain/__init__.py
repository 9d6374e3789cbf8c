"""Billing domain core: consumption, tariffs and posting rules as pure code with no I/O.

Modules: `consumption` (register deltas against a watermark), `periods` (local calendar periods
and exact pro-rata splits), `tariffs` (effective-dated versions, `price_interval`), `ledger`
(double-entry postings, hourly accrual, balance levels). Every error raised here derives from
`BillingDomainError`, itself a `ValueError` because each one means the input was wrong.
"""


class BillingDomainError(ValueError):
    """The root of every error the billing domain raises."""
