"""Billing domain core: consumption, tariffs and posting rules as pure code with no I/O.

Modules: `consumption` (register deltas against a watermark), `periods` (local calendar periods
and exact pro-rata splits), `tariffs` (effective-dated versions, `price_interval`), `tariff_config`
(tariff versions as stored and `Pricer`), `meters` (who pays for a meter when, the hour an amount
accrues to), `ledger` (double-entry postings, hourly accrual, balance levels). Every error raised
here is a `BillingDomainError` (see `shuidian_billing.errors`). Time is always a parameter.
"""

from shuidian_billing.errors import BillingDomainError

__all__ = ["BillingDomainError"]
